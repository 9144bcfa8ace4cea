//! The one way the daemon builds an HTTP client: rustls, canaryd's user agent, a connect timeout,
//! and no redirects (a redirect could carry a credential-bearing request to an address the object
//! does not name). Each caller adds what is its own (a whole-request timeout, extra CA roots).

use std::time::Duration;

/// A builder with the daemon's common settings; `connect` bounds connecting.
pub fn builder(connect: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .user_agent(concat!("canaryd/", env!("CARGO_PKG_VERSION")))
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(connect)
}

/// An answer's `Retry-After` in seconds (the HTTP-date form is not used by the receivers canaryd
/// calls), at most `cap`.
pub fn retry_after(headers: &reqwest::header::HeaderMap, cap: Duration) -> Option<Duration> {
    let secs: u64 = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()?;
    Some(Duration::from_secs(secs).min(cap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::http::{StatusCode, header};
    use axum::response::IntoResponse;
    use axum::routing::get;

    #[tokio::test]
    async fn a_redirect_is_not_followed_and_the_user_agent_is_canaryds() {
        let app = Router::new()
            .route(
                "/",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "/elsewhere")]).into_response() }),
            )
            .route(
                "/elsewhere",
                get(|headers: axum::http::HeaderMap| async move { format!("{:?}", headers.get(header::USER_AGENT)) }),
            )
            .route(
                "/agent",
                get(|headers: axum::http::HeaderMap| async move {
                    headers
                        .get(header::USER_AGENT)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                }),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        let client = builder(Duration::from_secs(2)).build().unwrap();
        let answer = client.get(format!("http://{addr}/")).send().await.unwrap();
        assert_eq!(answer.status(), 302, "the redirect is the answer, not followed");
        let agent = client.get(format!("http://{addr}/agent")).send().await.unwrap();
        assert!(agent.text().await.unwrap().starts_with("canaryd/"));
    }
}
