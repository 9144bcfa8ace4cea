//! The Istio mesh adapter: routes and weights (pure), preflight checks (pure), and the API side.

pub mod istio;
pub mod preflight;
pub mod routes;
