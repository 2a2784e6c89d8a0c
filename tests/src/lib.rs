//! End-to-end tests: real processes, real TLS, loopback only. See `tests/tests/`.
