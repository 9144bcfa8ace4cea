//! canaryd: progressive delivery for Kubernetes and Istio.
//!
//! The pipeline per RolloutPolicy is observe → plan (pure) → act → status; see README.md.

pub mod analysis;
pub mod body;
pub mod cli;
pub mod controller;
pub mod error;
pub mod failpoint;
pub mod gates;
pub mod hash;
pub mod http;
pub mod mesh;
pub mod metrics;
pub mod plan;
pub mod policy;
pub mod scale;
pub mod telemetry;
pub mod write;

pub use error::{Error, Result};
