//! The load harness: `loadgen`, a load generator that speaks what the gateway speaks (mTLS with
//! client certificates, HTTP/1.1, HTTP/2, and Linkerd's transport header), measures latency
//! without coordinated omission, and samples the target's CPU and memory. Micro-benchmarks of
//! the hot paths are in `benches/benches/`.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod conn;
pub mod plot;
pub mod procstat;
pub mod report;
pub mod run;
pub mod stats;
