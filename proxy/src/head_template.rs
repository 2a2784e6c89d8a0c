//! The header fields of a connection's last message, kept to build the next one's: for the
//! responses of a pooled connection to a service, and the requests of a caller's HTTP/1.1
//! connection.
//!
//! A peer sends the same header names in the same order message after message, and most
//! values the same too (`Server`, `Content-Type`, `User-Agent`, `Accept`); only a few change
//! (`Date` once a second, a trace or request id). Turning a field's bytes into an
//! `http::HeaderName` and a validated `HeaderValue` and hashing it into a new `HeaderMap` cost
//! about 4k instructions for eight fields, the largest part of reading a head. When a head's
//! field names are byte for byte those of the template, its map is the template's map cloned,
//! with the values that differ replaced: a name or value equal to bytes that were validated
//! before is valid, so nothing is given up but work. Framing (`Content-Length`,
//! `Transfer-Encoding`, `Connection`) is still read from each head's own bytes by its parser.
//! The `http1_template` fuzz target holds it to parsing afresh.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};

use crate::framing_fields::{BadContentLength, FramingFields};

/// Heads longer than this are not kept: it bounds what an idle pooled connection holds.
pub(crate) const MAX_KEPT_HEAD: usize = 4096;
/// Responses of another shape in a row before the template is replaced by the latest: a
/// service alternating between two shapes keeps one of them instead of rebuilding every time.
pub(crate) const MISSES_BEFORE_REPLACE: u8 = 4;
/// Heads in a row with the template's names but some other value before the template takes
/// the latest values. A `Date` moves on once a second and then differs from the template in
/// every head after (~350 instructions each to validate and insert); a value that differs in
/// every head (a request id) would make each refresh (~4k) pay for nothing, so when every head
/// since the last keep differed, the wait for the next doubles.
pub(crate) const STALE_BEFORE_REFRESH: u16 = 4;
/// The most heads a refresh waits for, once values keep changing.
const MAX_STALE_BEFORE_REFRESH: u16 = 4096;

/// Where one header field lies in a head's bytes.
#[derive(Debug, Clone)]
pub struct Span {
    pub name: (usize, usize),
    pub value: (usize, usize),
}

/// Where each of `fields` (parsed by httparse from `head`) lies in `head`, each noted in
/// `framing` on the way: one pass for both HTTP/1.1 codecs. Sized exactly: a fixed array would
/// be zeroed on every call.
pub fn field_spans(
    head: &[u8],
    fields: &[httparse::Header<'_>],
    framing: &mut FramingFields,
) -> Result<Vec<Span>, BadContentLength> {
    let base = head.as_ptr() as usize;
    let mut spans = Vec::with_capacity(fields.len());
    for h in fields {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        spans.push(Span {
            name: (name, name + h.name.len()),
            value: (value, value + h.value.len()),
        });
        framing.note(h.name.as_bytes(), h.value)?;
    }
    Ok(spans)
}

/// A field name or value that is not valid HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InvalidField;

/// `O`: what the kept head parsed to beyond its fields (a response's status line and framing),
/// noted by the codec; a head that repeats the kept one byte for byte is then taken whole
/// from the template (see [`HeadTemplate::repeat`]). `()` for codecs that note nothing.
pub struct HeadTemplate<O = ()> {
    /// A copy of the kept response's head (not a slice of the connection's read buffer, which
    /// would then never be reused in place).
    pub(crate) head: Bytes,
    /// Where each field lies in `head`, in the order they came.
    pub(crate) spans: Vec<Span>,
    /// Each field's name, parsed, in the same order.
    names: Vec<HeaderName>,
    /// The fields as a map, values pointing into `head`. Every name appears once: heads that
    /// repeat a name are not kept, so that replacing a value is one `insert`.
    headers: HeaderMap,
    /// Responses in a row whose names did not match.
    pub(crate) misses: u8,
    /// Heads in a row whose names matched and some value did not.
    stale: u16,
    /// How many such heads the next refresh waits for (0: [`STALE_BEFORE_REFRESH`]).
    refresh_after: u16,
    /// Heads since the template was kept.
    pub(crate) since_kept: u32,
    /// What the codec noted the kept head (these very bytes) parsed to, and the map it hands
    /// on for them.
    outcome: Option<(O, HeaderMap)>,
}

impl<O> Default for HeadTemplate<O> {
    fn default() -> Self {
        Self {
            head: Bytes::new(),
            spans: Vec::new(),
            names: Vec::new(),
            headers: HeaderMap::new(),
            misses: 0,
            stale: 0,
            refresh_after: 0,
            since_kept: 0,
            outcome: None,
        }
    }
}

impl<O: Clone> HeadTemplate<O> {
    /// When `buf` starts with the kept head byte for byte and the codec noted what it parsed
    /// to: the head's length, that outcome and the map the codec noted for it. The same bytes
    /// parse the same way (a head ends at its first empty line, whatever follows), so nothing
    /// is given up.
    /// A service answering the same request the same way within a second (a fixed-size body,
    /// a probe, a static file) sends the same head every time.
    pub fn repeat(&mut self, buf: &[u8]) -> Option<(usize, O, HeaderMap)> {
        let (outcome, map) = self.outcome.as_ref()?;
        let n = self.head.len();
        if buf.get(..n)? != &self.head[..] {
            return None;
        }
        let found = (n, outcome.clone(), map.clone());
        self.misses = 0;
        self.stale = 0;
        self.since_kept = self.since_kept.saturating_add(1);
        Some(found)
    }

    /// Notes what `head`, just parsed, came to, if it is the kept head's bytes, with the map
    /// to hand on for it: `map` of the head's fields as parsed (the codec may take out what
    /// it would remove from every such map before handing it on).
    pub fn note_outcome(
        &mut self,
        head: &[u8],
        outcome: O,
        map: impl FnOnce(&HeaderMap) -> HeaderMap,
    ) {
        // Noted once per kept head: once it is, a repeat never reaches the parser again.
        if self.outcome.is_none() && !self.spans.is_empty() && head == &self.head[..] {
            self.outcome = Some((outcome, map(&self.headers)));
        }
    }
}

impl<O> HeadTemplate<O> {
    /// The header map of the response whose head is `head`, fields at `spans`.
    pub fn headers(&mut self, head: &Bytes, spans: &[Span]) -> Result<HeaderMap, InvalidField> {
        if !self.spans.is_empty() && self.same_names(head, spans) {
            self.misses = 0;
            self.since_kept = self.since_kept.saturating_add(1);
            let mut headers = self.headers.clone();
            let mut differed = false;
            for ((now, was), name) in spans.iter().zip(&self.spans).zip(&self.names) {
                let value = &head[now.value.0..now.value.1];
                if value != &self.head[was.value.0..was.value.1] {
                    headers.insert(name.clone(), value_at(head, now)?);
                    differed = true;
                }
            }
            if differed {
                self.stale = self.stale.saturating_add(1);
                if self.stale >= self.refresh_after.max(STALE_BEFORE_REFRESH) {
                    self.refresh(head, spans, &headers);
                }
            } else {
                self.stale = 0;
            }
            return Ok(headers);
        }
        let headers = build(head, spans)?;
        self.misses = self.misses.saturating_add(1);
        if self.spans.is_empty() || self.misses >= MISSES_BEFORE_REPLACE {
            self.keep(head, spans, &headers)?;
        }
        Ok(headers)
    }

    fn same_names(&self, head: &[u8], spans: &[Span]) -> bool {
        spans.len() == self.spans.len()
            && spans
                .iter()
                .zip(&self.spans)
                .all(|(now, was)| head[now.name.0..now.name.1] == self.head[was.name.0..was.name.1])
    }

    /// Keeps `head`, whose names are the template's, for its values.
    fn refresh(&mut self, head: &Bytes, spans: &[Span], headers: &HeaderMap) {
        // Every head since the last keep differed: the value moves with each one.
        let always = u32::from(self.stale) >= self.since_kept;
        let next = if always {
            (self.refresh_after.max(STALE_BEFORE_REFRESH) * 2).min(MAX_STALE_BEFORE_REFRESH)
        } else {
            STALE_BEFORE_REFRESH
        };
        // The head was validated as it was read: keeping it again cannot fail, and if it did
        // the template would only be empty until the next head.
        let _ = self.keep(head, spans, headers);
        self.refresh_after = next;
    }

    /// Keeps `head` as the template when it can serve as one, else keeps nothing.
    fn keep(
        &mut self,
        head: &Bytes,
        spans: &[Span],
        headers: &HeaderMap,
    ) -> Result<(), InvalidField> {
        *self = HeadTemplate::<O>::default();
        if spans.is_empty() || head.len() > MAX_KEPT_HEAD || headers.keys_len() != spans.len() {
            return Ok(());
        }
        let copy = Bytes::copy_from_slice(head);
        let kept = build(&copy, spans)?;
        self.names = kept.keys().cloned().collect();
        self.head = copy;
        self.spans = spans.to_vec();
        self.headers = kept;
        Ok(())
    }
}

/// The map of a head's fields, each parsed and validated.
pub fn build(head: &Bytes, spans: &[Span]) -> Result<HeaderMap, InvalidField> {
    let mut headers = HeaderMap::with_capacity(spans.len());
    for span in spans {
        let name =
            HeaderName::from_bytes(&head[span.name.0..span.name.1]).map_err(|_| InvalidField)?;
        headers.append(name, value_at(head, span)?);
    }
    Ok(headers)
}

fn value_at(head: &Bytes, span: &Span) -> Result<HeaderValue, InvalidField> {
    HeaderValue::from_maybe_shared(head.slice(span.value.0..span.value.1)).map_err(|_| InvalidField)
}
