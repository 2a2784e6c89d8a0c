//! Clients of Linkerd's control plane, built on `linkerd2-proxy-api` (Linkerd's own protobuf
//! definitions and tonic stubs), so the gateway asks for its identity, its targets' endpoints
//! and its authorization exactly as a Linkerd proxy does.
//!
//! - [`channel`]: how a control-plane service is reached: plaintext HTTP/2 on loopback, mTLS
//!   (TLS 1.3, the service's identity checked) anywhere else.
//! - [`certify`]: `io.linkerd.proxy.identity.Identity/Certify`: a key made in memory, a CSR,
//!   the service-account token, and a checked answer.
//! - [`destination`]: `io.linkerd.proxy.destination.Destination/Get`: endpoints with their
//!   identities and protocol hints, each update checked whole.
//! - [`policy`]: `io.linkerd.proxy.inbound.InboundServerPolicies/WatchPort`: the port's
//!   authorizations and HTTP routes, evaluated without the API types.
#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]

pub mod certify;
pub mod channel;
pub mod destination;
pub mod policy;

pub use certify::{refresh_in, Certifier, CertifyError};
pub use channel::{ControlAddr, ControlAddrError, Dial, FIRST_ANSWER_WITHIN};
pub use destination::{Change, DestinationError, Discovered, Resolver, Watch};
pub use policy::{PolicyClient, PolicyError, ServerPolicy};
