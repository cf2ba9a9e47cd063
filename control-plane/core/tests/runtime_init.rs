//! The `/init` client against a real HTTP server that answers from a script.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use sandbox_core::{HttpRuntimeInit, InitRuntimeRequest, RuntimeInit};

#[derive(Default)]
struct Script {
    answers: VecDeque<u16>,
    /// (access token header, body) of every request.
    seen: Vec<(String, String)>,
}

/// Serves `POST /init` on a free loopback port, answering each request with the next status.
async fn runtime(answers: &[u16]) -> (String, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script {
        answers: answers.iter().copied().collect(),
        seen: Vec::new(),
    }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/", listener.local_addr().unwrap());
    let s = script.clone();
    tokio::spawn(async move {
        loop {
            let (conn, _) = listener.accept().await.unwrap();
            let s = s.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let s = s.clone();
                    async move {
                        assert_eq!(
                            (req.method(), req.uri().path()),
                            (&http::Method::POST, "/init")
                        );
                        let token = req.headers()["x-access-token"]
                            .to_str()
                            .unwrap()
                            .to_string();
                        let body = req.into_body().collect().await.unwrap().to_bytes();
                        let mut s = s.lock().unwrap();
                        s.seen
                            .push((token, String::from_utf8(body.to_vec()).unwrap()));
                        let status = s.answers.pop_front().unwrap_or(200);
                        Ok::<_, Infallible>(
                            http::Response::builder()
                                .status(status)
                                .body(Full::new(Bytes::from_static(b"{\"message\":\"no\"}")))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(conn), svc)
                    .await;
            });
        }
    });
    (url, script)
}

fn request() -> InitRuntimeRequest {
    InitRuntimeRequest {
        env_vars: BTreeMap::from([("API_KEY".to_string(), "sk-1".to_string())]),
        access_token: "tok-1".into(),
        skip_refresh: false,
    }
}

#[tokio::test]
async fn sends_the_request_with_its_token_and_retries_server_errors() {
    let (url, script) = runtime(&[503, 500, 200]).await;
    let client = HttpRuntimeInit::new(Duration::from_secs(1));
    client.init(&url, &request()).await.unwrap();
    let s = script.lock().unwrap();
    assert_eq!(s.seen.len(), 3);
    let (token, body) = &s.seen[2];
    assert_eq!(token, "tok-1");
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(
        body,
        serde_json::json!({"envVars": {"API_KEY": "sk-1"}, "accessToken": "tok-1"})
    );
}

#[tokio::test]
async fn unauthorized_counts_as_initialised_and_other_client_errors_fail_at_once() {
    let (url, _) = runtime(&[401]).await;
    let client = HttpRuntimeInit::new(Duration::from_secs(1));
    client.init(&url, &request()).await.unwrap();

    let (url, script) = runtime(&[400, 200]).await;
    let err = client.init(&url, &request()).await.unwrap_err();
    assert_eq!(err.url, format!("{url}init"));
    assert_eq!(err.detail, "400 Bad Request: {\"message\":\"no\"}");
    assert_eq!(script.lock().unwrap().seen.len(), 1, "not retried");
}

#[tokio::test]
async fn gives_up_after_five_tries() {
    let (url, script) = runtime(&[500; 6]).await;
    let err = HttpRuntimeInit::new(Duration::from_secs(1))
        .init(&url, &request())
        .await
        .unwrap_err();
    assert!(err.detail.starts_with("500 Internal Server Error"), "{err}");
    assert_eq!(script.lock().unwrap().seen.len(), 5);
    // Nothing listening: a transport error, also tried five times.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let err = HttpRuntimeInit::new(Duration::from_secs(1))
        .post_init(&closed, "t", Bytes::from_static(b"{}"))
        .await
        .unwrap_err();
    assert_eq!(err.url, format!("{closed}/init"));
}
