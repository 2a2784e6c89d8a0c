//! Reads the gateway's own `/metrics` page back into samples: the dashboard is drawn from
//! the counters the gateway keeps anyway, so an open dashboard costs a render a second and
//! a closed one nothing.

/// One sample: family (with its `_bucket`/`_sum`/`_count` suffix), labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    pub fn label(&self, key: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .unwrap_or("")
    }
}

/// Parses the Prometheus text format; lines it cannot read are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter_map(line).collect()
}

fn line(l: &str) -> Option<Sample> {
    let l = l.trim();
    if l.is_empty() || l.starts_with('#') {
        return None;
    }
    let (name, rest) = match l.find(['{', ' ']) {
        Some(i) => l.split_at(i),
        None => return None,
    };
    let (labels, rest) = if let Some(body) = rest.strip_prefix('{') {
        labels(body)?
    } else {
        (Vec::new(), rest)
    };
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_string(),
        labels,
        value,
    })
}

/// `k="v",...}` and what follows the closing brace.
fn labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start_matches([',', ' ']);
        if let Some(rest) = s.strip_prefix('}') {
            return Some((out, rest));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        let mut chars = s[eq + 1..].strip_prefix('"')?.char_indices();
        let mut value = String::new();
        let end = loop {
            match chars.next()? {
                (i, '"') => break i,
                (_, '\\') => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    c => value.push(c),
                },
                (_, c) => value.push(c),
            }
        };
        out.push((key, value));
        s = &s[eq + 1 + 1 + end + 1..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_exporter_writes() {
        let text = "# TYPE request_total counter\n\
            request_total{direction=\"inbound\",authority=\"a:80\",client_id=\"x\"} 7\n\
            up 1\n\
            response_latency_ms_bucket{le=\"+Inf\",path=\"q\\\"uo\\\\te\"} 3\n\
            bad{unterminated=\"x 1\n";
        let s = parse(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].label("authority"), "a:80");
        assert_eq!(s[0].value, 7.0);
        assert_eq!(s[1].name, "up");
        assert_eq!(s[2].label("path"), "q\"uo\\te");
        assert_eq!(s[2].label("le"), "+Inf");
    }
}
