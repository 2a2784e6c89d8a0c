//! Load harness and micro-benchmarks for the gateway. The micro-benchmarks live in
//! `benches/benches/`; run them with `cargo bench -p bench`.
