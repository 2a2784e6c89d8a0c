//! Per-handshake identity work: taking the caller's identity from its certificate, and
//! verifying a client chain against the anchors (what every accepted connection pays).

use criterion::{criterion_group, criterion_main, Criterion};
use identity::{Pki, Usage};

const VOTE_BOT: &str = "vote-bot.emojivoto.serviceaccount.identity.linkerd.cluster.local";

fn bench(c: &mut Criterion) {
    let pki = Pki::new().expect("pki");
    let creds = pki.credentials(VOTE_BOT).expect("leaf");
    let anchors = pki.anchors().expect("anchors");
    let chain = creds.chain().to_vec();
    let now = identity::verify::now();

    c.bench_function("peer_identity", |b| {
        b.iter(|| identity::peer_identity(std::hint::black_box(&chain[0])).expect("id"))
    });
    c.bench_function("verify_client_chain", |b| {
        b.iter(|| {
            anchors
                .verify(&chain[0], &chain[1..], now, Usage::Client)
                .expect("valid")
        })
    });
    c.bench_function("identity_parse", |b| {
        b.iter(|| identity::Identity::parse(std::hint::black_box(VOTE_BOT)).expect("name"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
