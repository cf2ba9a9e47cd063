//! `POST /init` to a sandbox's runtime: the request a claim stores on the sandbox and the call
//! that delivers it (retried as upstream: 5 tries, 200 ms apart and growing, on transport errors,
//! timeouts and 5xx).

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The body of `POST /init`, also stored on a claimed sandbox so it can be replayed after a
/// resume or an upgrade.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitRuntimeRequest {
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    pub access_token: String,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skip_refresh: bool,
}

impl InitRuntimeRequest {
    /// The JSON form (what is stored and what is sent).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an init request serialises")
    }
}

/// The runtime did not accept `/init`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("POST {url}: {detail}")]
pub struct InitError {
    pub url: String,
    pub detail: String,
}

/// Initialises a sandbox's runtime.
#[async_trait]
pub trait RuntimeInit: Send + Sync {
    /// `POST {base_url}/init`; `Ok` once the runtime accepted it (or was initialised already).
    async fn init(&self, base_url: &str, request: &InitRuntimeRequest) -> Result<(), InitError>;
}

/// The HTTP client of the runtime's `/init`.
#[derive(Debug, Clone)]
pub struct HttpRuntimeInit {
    client: Client<HttpConnector, Full<Bytes>>,
    attempt_timeout: Duration,
}

const TRIES: u32 = 5;
const RETRY_STEP: Duration = Duration::from_millis(200);

impl HttpRuntimeInit {
    /// `attempt_timeout` bounds each try (upstream: 1 s); connecting is bounded by 1 s as well.
    pub fn new(attempt_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        HttpRuntimeInit {
            client: Client::builder(TokioExecutor::new()).build(connector),
            attempt_timeout,
        }
    }

    /// POSTs `body` to `{base_url}/init` with `X-Access-Token: token`. 2xx succeeds, and so does
    /// 401 (the runtime was initialised already, with this or another token); another 4xx fails
    /// at once; transport errors, timeouts and 5xx are tried again (5 tries, 200 ms × n apart).
    pub async fn post_init(
        &self,
        base_url: &str,
        token: &str,
        body: Bytes,
    ) -> Result<(), InitError> {
        let url = format!("{}/init", base_url.trim_end_matches('/'));
        let mut last = String::new();
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(RETRY_STEP * attempt).await;
            }
            match self.try_once(&url, token, body.clone()).await {
                Ok(()) => return Ok(()),
                Err(Try::Final(why)) => {
                    last = why;
                    break;
                }
                Err(Try::Again(why)) => last = why,
            }
        }
        Err(InitError { url, detail: last })
    }

    async fn try_once(&self, url: &str, token: &str, body: Bytes) -> Result<(), Try> {
        let req = http::Request::post(url)
            .header(http::header::CONTENT_TYPE, "application/json")
            .header("X-Access-Token", token)
            .body(Full::new(body))
            .map_err(|e| Try::Final(e.to_string()))?;
        let resp = match tokio::time::timeout(self.attempt_timeout, self.client.request(req)).await
        {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => return Err(Try::Again(e.to_string())),
            Err(_) => return Err(Try::Again("timed out".into())),
        };
        let status = resp.status();
        if status.is_success() || status == http::StatusCode::UNAUTHORIZED {
            return Ok(());
        }
        let text = resp
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let why = format!("{status}: {}", String::from_utf8_lossy(&text));
        Err(if status.is_client_error() {
            Try::Final(why)
        } else {
            Try::Again(why)
        })
    }
}

enum Try {
    Again(String),
    Final(String),
}

#[async_trait]
impl RuntimeInit for HttpRuntimeInit {
    async fn init(&self, base_url: &str, request: &InitRuntimeRequest) -> Result<(), InitError> {
        let body = Bytes::from(request.to_json());
        self.post_init(base_url, &request.access_token, body).await
    }
}
