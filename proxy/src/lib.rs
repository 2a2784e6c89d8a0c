//! The gateway data plane (arriving with the gateway issue).
