//! The sandbox's runtime (envd, `agent-runtime` on port 49983) as this service needs it: the
//! sandbox-wide environment variables that `/init` gave it (`GET /envs`), which every context
//! sets in its kernel, and the check of a request's `X-Access-Token` — the runtime owns the
//! token, so a token it accepts on `/envs` is the sandbox's token.
//!
//! A token is remembered (as a SHA-256 digest) only once the runtime is known to require one,
//! so a token accepted while the runtime was still open (a pooled sandbox before its claim) is
//! checked again later.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, StatusCode, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

pub type Envs = Arc<BTreeMap<String, String>>;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvdError {
    #[error("invalid or missing access token")]
    Unauthorized,
    #[error("the sandbox runtime cannot be reached to check the access token: {0}")]
    Unavailable(String),
}

struct Accepted {
    digest: [u8; 32],
    envs: Envs,
}

/// Client of the runtime; `None` base: no runtime (every request passes, no sandbox env vars).
pub struct Envd {
    base: Option<String>,
    client: Client<HttpConnector, Empty<Bytes>>,
    accepted: Mutex<Option<Accepted>>,
    timeout: Duration,
}

impl Envd {
    pub fn new(base: Option<String>) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        Self {
            base: base.map(|b| b.trim_end_matches('/').to_string()),
            client: Client::builder(TokioExecutor::new()).build(connector),
            accepted: Mutex::new(None),
            timeout: Duration::from_secs(10),
        }
    }

    /// Checks a request's token and returns the sandbox's env vars.
    pub async fn authorize(&self, token: Option<&str>) -> Result<Envs, EnvdError> {
        if self.base.is_none() {
            return Ok(Envs::default());
        }
        let digest: [u8; 32] = Sha256::digest(token.unwrap_or_default().as_bytes()).into();
        if token.is_some()
            && let Some(a) = self.lock().as_ref()
            && bool::from(a.digest.ct_eq(&digest))
        {
            return Ok(Arc::clone(&a.envs));
        }
        let envs = match self.get_envs(token).await? {
            Some(envs) => Arc::new(envs),
            None => return Err(EnvdError::Unauthorized),
        };
        // Remember the token only if the runtime refuses requests without it.
        if token.is_some() && self.get_envs(None).await?.is_none() {
            *self.lock() = Some(Accepted {
                digest,
                envs: Arc::clone(&envs),
            });
        }
        Ok(envs)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Accepted>> {
        self.accepted.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /envs`: `Some(envs)` on 200, `None` when the token is refused.
    async fn get_envs(
        &self,
        token: Option<&str>,
    ) -> Result<Option<BTreeMap<String, String>>, EnvdError> {
        let Some(base) = &self.base else {
            return Ok(Some(BTreeMap::new()));
        };
        let uri: Uri = format!("{base}/envs")
            .parse()
            .map_err(|e| EnvdError::Unavailable(format!("bad runtime URL: {e}")))?;
        let mut req = Request::get(uri);
        if let Some(t) = token {
            req = req.header("x-access-token", t);
        }
        let req = req
            .body(Empty::new())
            .map_err(|e| EnvdError::Unavailable(e.to_string()))?;
        let unavailable = |e: String| EnvdError::Unavailable(e);
        let resp = tokio::time::timeout(self.timeout, self.client.request(req))
            .await
            .map_err(|_| unavailable("no answer within 10 s".into()))?
            .map_err(|e| unavailable(e.to_string()))?;
        let status = resp.status();
        let body = tokio::time::timeout(self.timeout, resp.into_body().collect())
            .await
            .map_err(|_| unavailable("no answer within 10 s".into()))?
            .map_err(|e| unavailable(e.to_string()))?
            .to_bytes();
        match status {
            StatusCode::OK => parse_envs(&body).map(Some).map_err(unavailable),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Ok(None),
            s => Err(unavailable(format!("GET /envs answered {s}"))),
        }
    }
}

/// `/envs` is a JSON object of strings; other values are skipped.
fn parse_envs(body: &[u8]) -> Result<BTreeMap<String, String>, String> {
    let v: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("GET /envs: {e}"))?;
    let obj = v.as_object().ok_or("GET /envs: not a JSON object")?;
    Ok(obj
        .iter()
        .filter(|(k, _)| crate::protocol::check_env_name(k).is_ok())
        .filter_map(|(k, v)| v.as_str().map(|s| (k.clone(), s.to_string())))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn envs_bodies() {
        let e = parse_envs(br#"{"A":"1","E2B_SANDBOX":"true","N":5,"bad-name":"x"}"#).unwrap();
        assert_eq!(e.len(), 2);
        assert_eq!(e["A"], "1");
        assert!(parse_envs(b"[]").is_err());
        assert!(parse_envs(b"{").is_err());
    }

    /// A fake runtime: `/envs` with a token that is required once `token` is set.
    async fn fake_runtime(token: Option<&'static str>, hits: Arc<AtomicUsize>) -> String {
        use axum::http::HeaderMap;
        let app = axum::Router::new().route(
            "/envs",
            axum::routing::get(move |headers: HeaderMap| {
                let hits = Arc::clone(&hits);
                async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let given = headers.get("x-access-token").and_then(|v| v.to_str().ok());
                    match token {
                        Some(t) if given != Some(t) => (StatusCode::UNAUTHORIZED, "{}".to_string()),
                        _ => (StatusCode::OK, r#"{"FOO":"bar"}"#.to_string()),
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn a_token_the_runtime_requires_is_checked_once() {
        let hits = Arc::new(AtomicUsize::new(0));
        let envd = Envd::new(Some(fake_runtime(Some("secret"), Arc::clone(&hits)).await));
        assert_eq!(envd.authorize(None).await, Err(EnvdError::Unauthorized));
        assert_eq!(
            envd.authorize(Some("wrong")).await,
            Err(EnvdError::Unauthorized)
        );
        let envs = envd.authorize(Some("secret")).await.unwrap();
        assert_eq!(envs["FOO"], "bar");
        let before = hits.load(Ordering::SeqCst);
        envd.authorize(Some("secret")).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), before, "remembered");
        assert_eq!(
            envd.authorize(Some("wrong")).await,
            Err(EnvdError::Unauthorized),
            "another token is checked again"
        );
    }

    #[tokio::test]
    async fn an_open_runtime_is_asked_every_time() {
        let hits = Arc::new(AtomicUsize::new(0));
        let envd = Envd::new(Some(fake_runtime(None, Arc::clone(&hits)).await));
        envd.authorize(Some("anything")).await.unwrap();
        let before = hits.load(Ordering::SeqCst);
        envd.authorize(Some("anything")).await.unwrap();
        assert!(hits.load(Ordering::SeqCst) > before, "not remembered");
        assert!(envd.authorize(None).await.is_ok());
    }

    #[tokio::test]
    async fn no_runtime_means_no_check_and_a_dead_one_is_unavailable() {
        assert!(Envd::new(None).authorize(None).await.unwrap().is_empty());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let envd = Envd::new(Some(format!("http://{addr}")));
        assert!(matches!(
            envd.authorize(Some("t")).await,
            Err(EnvdError::Unavailable(_))
        ));
    }
}
