//! connector-gateway: a policy gateway for Microsoft Graph's Application Proxy connector writes.
//!
//! For every request that would change a connector it recognises the write, authenticates and
//! authorises the caller, validates the body, rate-limits, writes a tamper-evident audit record
//! before Graph sees the change, and forwards the exact validated bytes. Everything else passes
//! through (or is denied, by configuration).
//!
//! The same stack runs as the standalone server ([`launch::start`]) and as a tower layer
//! ([`GatewayLayer`]) that any Rust service can embed. See `DESIGN.md` for the architecture.

#![forbid(unsafe_code)]
#![deny(rust_2018_idioms)]
#![warn(missing_docs)]

pub mod admin;
pub mod audit;
pub mod auth;
pub mod batch;
pub mod body;
pub mod config;
pub mod credential;
pub mod demo;
pub mod error;
pub mod future;
pub mod gateway;
pub mod launch;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod route;
pub mod server;
pub mod simulator;
pub mod step;
pub mod trace;

pub use config::Config;
pub use gateway::{ForwardBody, GatewayLayer, GatewayService};

/// Installs aws-lc-rs as the process-wide rustls provider. Call once at start-up; jsonwebtoken is
/// built on the same provider, so one crypto library serves the whole tree.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
}
