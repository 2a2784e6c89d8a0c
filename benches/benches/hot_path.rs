//! The gateway's per-request and per-connection parsing: authority normalisation and route
//! lookup (every request), transport-header decoding (every Linkerd connection).

use std::{hint::black_box, sync::Arc, time::Duration};

use criterion::{criterion_group, criterion_main, Criterion};
use proxy::{
    authority::Authority,
    routing::{Balancer, Protocol, Resolver, Router, RouterConfig, Target},
};
use transport_header::{Header, SessionProtocol};

fn router() -> Router {
    // 200 static routes, as a cluster with many exported services might have.
    let routes = (0..200)
        .map(|i| {
            let name = Authority::parse(&format!("svc-{i}.ns-{}.svc.cluster.local:80", i % 7))
                .expect("name");
            Arc::new(
                Target::new(
                    name,
                    Protocol::Http1,
                    &[format!("10.0.{}.{}:8080", i / 250, i % 250)
                        .parse()
                        .expect("addr")],
                    Balancer::P2c,
                )
                .expect("target"),
            )
        })
        .collect();
    Router::new(RouterConfig {
        routes,
        cluster_domain: "cluster.local".into(),
        exported: None,
        resolver: Resolver::default(),
        balancer: Balancer::P2c,
        dns_ttl: Duration::from_secs(5),
        discovery: None,
    })
}

fn bench(c: &mut Criterion) {
    c.bench_function("authority_parse", |b| {
        b.iter(|| {
            Authority::parse(black_box("Web-Svc.Emojivoto.svc.cluster.local.:80")).expect("ok")
        })
    });
    let r = router();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("rt");
    let hit = Authority::parse("svc-137.ns-4.svc.cluster.local:80").expect("a");
    c.bench_function("route_lookup_static_200", |b| {
        b.iter(|| rt.block_on(r.route(black_box(&hit))).expect("routed"))
    });
    c.bench_function("route_parse_and_lookup", |b| {
        b.iter(|| {
            let a = Authority::parse(black_box("svc-137.ns-4.svc.cluster.local")).expect("a");
            rt.block_on(r.route(&a)).expect("routed")
        })
    });
    let t = rt.block_on(r.route(&hit)).expect("t");
    c.bench_function("p2c_pick_and_release", |b| {
        b.iter(|| drop(black_box(t.try_pick().expect("pick"))))
    });
    let header = Header {
        port: 80,
        name: Some("web-svc.emojivoto.svc.cluster.local".into()),
        protocol: Some(SessionProtocol::Http2),
    }
    .encode();
    c.bench_function("transport_header_decode", |b| {
        b.iter(|| Header::decode(black_box(&header)).expect("ok"))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
