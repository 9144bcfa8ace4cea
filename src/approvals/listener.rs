//! The approvals listener (`--approvals-listen`): the HTTP approval API for bots and CI and Slack's
//! interactivity endpoint, on their own port so that only these go through an Ingress (/metrics
//! stays on the internal one). Both replicas serve it: a request only becomes a RolloutCommand,
//! which the leader admits and carries out like one from the CLI (src/controller/commands.rs).
//! Connections are bounded here; each route authenticates its requests (api.rs, click.rs).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::connect_info::ConnectInfo;
use axum::extract::{DefaultBodyLimit, Request};
use axum::http::StatusCode;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use kube::Client;
use tokio::sync::Semaphore;
use tracing::warn;

use super::auth::Auth;
use super::keys::SlackKeys;

/// Larger bodies get 413: a Slack payload or an API call is a few KiB.
pub const BODY_LIMIT: usize = 64 * 1024;
/// Whole-request bound (reading the body included): a slow client cannot hold a worker.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Request headers must arrive within this (a connection-level bound; the body is within
/// [`REQUEST_TIMEOUT`]).
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// Connections served at once; more are closed at accept.
pub const MAX_CONNECTIONS: usize = 256;
/// Verified Slack clicks being carried out at once (after their answer); more get 503.
pub const MAX_CLICKS_IN_FLIGHT: usize = 64;
/// Slack Web API (`usergroups.users.list`) and `response_url` calls: after the click's answer,
/// so not bound by Slack's 3 seconds.
const SLACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What the listener needs: the daemon's client and who it is (`spec.requestedBy` of its commands).
#[derive(Clone)]
pub struct Approvals {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub client: Client,
    pub http: reqwest::Client,
    pub identity: String,
    /// The namespace the daemon watches (None: all); commands elsewhere would never be handled.
    pub namespace: Option<String>,
    pub keys: SlackKeys,
    pub auth: Auth,
    pub clicks: Arc<Semaphore>,
}

impl Approvals {
    pub fn new(
        client: Client,
        identity: String,
        namespace: Option<String>,
        keys: SlackKeys,
    ) -> Result<Self, reqwest::Error> {
        let http = crate::http::client::builder(SLACK_TIMEOUT)
            .timeout(SLACK_TIMEOUT)
            .build()?;
        Ok(Self {
            inner: Arc::new(Inner {
                auth: Auth::new(client.clone()),
                client,
                http,
                identity,
                namespace,
                keys,
                clicks: Arc::new(Semaphore::new(MAX_CLICKS_IN_FLIGHT)),
            }),
        })
    }

    /// Is `ns` one this canaryd handles commands in? If not, what to say.
    pub(super) fn unwatched(&self, ns: &str) -> Option<String> {
        let watched = self.inner.namespace.as_ref()?;
        (watched != ns).then(|| format!("this canaryd watches namespace {watched} only"))
    }
}

pub fn router(approvals: Approvals) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/rolloutpolicies/{name}/{command}",
            post(super::api::api_command),
        )
        .route("/slack/interactivity", post(super::click::slack_interactivity))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(middleware::from_fn(deadline))
        .with_state(approvals)
}

/// Serves `app` over HTTP/1.1 with [`HEADER_TIMEOUT`] and [`MAX_CONNECTIONS`] (`axum::serve` sets
/// no header timeout, so a client sending its headers slowly would hold a connection for ever).
/// Each request carries its peer's address (`ConnectInfo`): failures are counted per source.
pub async fn serve(listener: tokio::net::TcpListener, app: Router) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                warn!(error = %e, "approvals listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            continue; // dropping the stream closes it
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            let mut app = app.clone();
            async move { tower::Service::call(&mut app, request).await }
        });
        tokio::spawn(async move {
            let served = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(error = %e, "approvals connection ended");
            }
            drop(permit);
        });
    }
}

async fn deadline(request: Request, next: Next) -> Response {
    match tokio::time::timeout(REQUEST_TIMEOUT, next.run(request)).await {
        Ok(response) => response,
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "timed out\n").into_response(),
    }
}
