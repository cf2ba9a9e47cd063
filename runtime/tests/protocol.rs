//! Wire-level tests of the real `agent-runtime` binary: Connect framing over HTTP/1.1 (chunked
//! request and response bodies) and h2c, unary and stream errors, keepalives, timeouts, client
//! streams, disconnects, the access token, gzip requests, CORS and graceful shutdown.

mod common;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use std::net::SocketAddr;

use http::{Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use test_support::{ChildGuard, free_port};

use common::*;

async fn run_start(
    client: &Client<HttpConnector, Body>,
    d: &Daemon,
    cmd: &str,
    chunked: bool,
) -> Vec<(u8, Value)> {
    let env = envelope(0, &start_body(cmd));
    let body = if chunked {
        let (tx, body) = channel_body();
        tokio::spawn(async move {
            // Split the envelope in two chunks, as pyqwest may.
            let _ = tx.send(env.slice(..3)).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            let _ = tx.send(env.slice(3..)).await;
        });
        body
    } else {
        full(env)
    };
    let req = stream_req(&d.url("/process.Process/Start"))
        .body(body)
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/connect+json");
    Envelopes::new(resp.into_body()).all().await
}

#[tokio::test]
async fn start_over_http1_chunked_and_h2c() {
    let d = Daemon::start(&[]);
    for (client, chunked) in [(h1(), true), (h1(), false), (h2c(), true)] {
        let events = run_start(&client, &d, "echo hello; echo oops >&2; exit 4", chunked).await;
        assert!(
            events[0].1["event"]["start"]["pid"].as_u64().unwrap() > 0,
            "{events:?}"
        );
        assert_eq!(stdout_of(&events), "hello\n");
        let end = &events[events.len() - 2].1["event"]["end"];
        assert_eq!(
            end,
            &json!({"exitCode": 4, "exited": true, "status": "exit status 4", "error": "exit status 4"})
        );
        assert_eq!(events.last().unwrap(), &(2u8, json!({})));
        assert!(
            events
                .iter()
                .any(|(_, e)| e["event"]["data"]["stderr"].is_string())
        );
    }
}

#[tokio::test]
async fn unary_calls_and_errors() {
    let d = Daemon::start(&[]);
    for client in [h1(), h2c()] {
        let resp = client
            .request(unary(&d.url("/process.Process/List"), &json!({})))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], "application/json");
        assert!(body_json(resp).await["processes"].is_array());

        let resp = client
            .request(unary(
                &d.url("/filesystem.Filesystem/Stat"),
                &json!({"path": "/no/such"}),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let v = body_json(resp).await;
        assert_eq!(v["code"], "not_found");
        assert!(v["message"].as_str().unwrap().contains("No such file"));

        let resp = client
            .request(unary(
                &d.url("/filesystem.Filesystem/MakeDir"),
                &json!({"path": "/"}),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CONFLICT);
        assert_eq!(body_json(resp).await["code"], "already_exists");

        let resp = client
            .request(unary(
                &d.url("/process.Process/SendSignal"),
                &json!({"process": {"pid": 1}, "signal": "SIGHUP"}),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body_json(resp).await["code"], "invalid_argument");

        let resp = client
            .request(unary(&d.url("/process.Process/Nope"), &json!({})))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_IMPLEMENTED);
        assert_eq!(body_json(resp).await["code"], "unimplemented");

        let resp = client
            .request(unary(&d.url("/other.Service/Call"), &json!({})))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);

        let req = Request::post(d.url("/process.Process/List"))
            .header("content-type", "application/proto")
            .body(full(""))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

        let req = Request::get(d.url("/process.Process/List"))
            .body(full(""))
            .unwrap();
        let resp = client.request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);

        let resp = client
            .request(unary(
                &d.url("/filesystem.Filesystem/ListDir"),
                &json!({"path": 5}),
            ))
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        assert_eq!(body_json(resp).await["code"], "invalid_argument");
    }
}

#[tokio::test]
async fn stream_errors_are_end_stream_messages_with_http_200() {
    let d = Daemon::start(&[]);
    let client = h1();
    let body = json!({"process": {"cmd": "pwd", "cwd": "/definitely/missing"}});
    let req = stream_req(&d.url("/process.Process/Start"))
        .body(full(envelope(0, &body)))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let events = Envelopes::new(resp.into_body()).all().await;
    assert_eq!(
        events,
        vec![(
            2,
            json!({"error": {"code": "invalid_argument", "message": "cwd '/definitely/missing' does not exist"}})
        )]
    );

    let req = stream_req(&d.url("/process.Process/Connect"))
        .body(full(envelope(0, &json!({"process": {"pid": 4_000_000}}))))
        .unwrap();
    let events = Envelopes::new(client.request(req).await.unwrap().into_body())
        .all()
        .await;
    assert_eq!(events[0].1["error"]["code"], "not_found");

    let req = stream_req(&d.url("/process.Process/Start"))
        .header("authorization", "Basic bm9ib2R5LXJlYWxseS1ub3QtaGVyZTo=")
        .body(full(envelope(0, &start_body("true"))))
        .unwrap();
    let events = Envelopes::new(client.request(req).await.unwrap().into_body())
        .all()
        .await;
    assert_eq!(
        events[0].1["error"],
        json!({"code": "unauthenticated", "message": "invalid username: 'nobody-really-not-here'"})
    );
}

#[tokio::test]
async fn keepalives_while_idle() {
    let d = Daemon::start(&[]);
    let req = stream_req(&d.url("/process.Process/Start"))
        .header("keepalive-ping-interval", "1")
        .body(full(envelope(0, &start_body("sleep 2.5; echo done"))))
        .unwrap();
    let events = Envelopes::new(h1().request(req).await.unwrap().into_body())
        .all()
        .await;
    let keepalives = events
        .iter()
        .filter(|(_, e)| e["event"]["keepalive"].is_object())
        .count();
    assert!(keepalives >= 2, "{events:?}");
    assert_eq!(stdout_of(&events), "done\n");
}

#[tokio::test]
async fn connect_timeout_bounds_the_process() {
    let d = Daemon::start(&[]);
    let client = h1();
    let started = Instant::now();
    let req = stream_req(&d.url("/process.Process/Start"))
        .header("connect-timeout-ms", "500")
        .body(full(envelope(0, &start_body("sleep 30"))))
        .unwrap();
    let events = Envelopes::new(client.request(req).await.unwrap().into_body())
        .all()
        .await;
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(
        events.last().unwrap().1["error"]["code"],
        "deadline_exceeded",
        "{events:?}"
    );
    let pid = events[0].1["event"]["start"]["pid"].as_u64().unwrap();
    // The process was killed: it leaves the process list.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let v = body_json(
            client
                .request(unary(&d.url("/process.Process/List"), &json!({})))
                .await
                .unwrap(),
        )
        .await;
        let pids: Vec<u64> = v["processes"]
            .as_array()
            .map(|a| a.iter().map(|p| p["pid"].as_u64().unwrap()).collect())
            .unwrap_or_default();
        if !pids.contains(&pid) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "process {pid} still running after its timeout"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn client_stream_input_and_disconnect_survival() {
    let d = Daemon::start(&[]);
    let client = h1();
    // Start `cat` with stdin, read only the start event, then drop the stream (disconnect).
    let body = json!({"process": {"cmd": "cat"}, "stdin": true});
    let req = stream_req(&d.url("/process.Process/Start"))
        .body(full(envelope(0, &body)))
        .unwrap();
    let mut first = Envelopes::new(client.request(req).await.unwrap().into_body());
    let pid = first.next().await.unwrap().1["event"]["start"]["pid"]
        .as_u64()
        .unwrap();
    drop(first);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Reattach, then stream input in several chunked envelopes.
    let req = stream_req(&d.url("/process.Process/Connect"))
        .body(full(envelope(0, &json!({"process": {"pid": pid}}))))
        .unwrap();
    let reattached = client.request(req).await.unwrap();
    let (tx, body) = channel_body();
    let req = stream_req(&d.url("/process.Process/StreamInput"))
        .body(body)
        .unwrap();
    let input = tokio::spawn(h1().request(req));
    tx.send(envelope(0, &json!({"start": {"process": {"pid": pid}}})))
        .await
        .unwrap();
    for word in ["one ", "two ", "three\n"] {
        let b64 = agent_runtime::proto::encode_b64(word.as_bytes());
        tx.send(envelope(0, &json!({"data": {"input": {"stdin": b64}}})))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    tx.send(envelope(0, &json!({"keepalive": {}})))
        .await
        .unwrap();
    drop(tx);
    let resp = input.await.unwrap().unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        Envelopes::new(resp.into_body()).all().await,
        vec![(0, json!({})), (2, json!({}))]
    );

    let resp = client
        .request(unary(
            &d.url("/process.Process/CloseStdin"),
            &json!({"process": {"pid": pid}}),
        ))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let events = Envelopes::new(reattached.into_body()).all().await;
    assert_eq!(stdout_of(&events), "one two three\n");
    assert_eq!(events[events.len() - 2].1["event"]["end"]["exited"], true);
}

#[tokio::test]
async fn access_token_and_exemptions() {
    let d = Daemon::start(&["--access-token", "s3cret"]);
    let client = h1();
    let resp = client
        .request(unary(&d.url("/process.Process/List"), &json!({})))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        body_json(resp).await,
        json!({"code": 401, "message": "unauthorized access, please provide a valid access token or method signing if supported"})
    );
    let mut req = unary(&d.url("/process.Process/List"), &json!({}));
    req.headers_mut()
        .insert("x-access-token", "s3cret".parse().unwrap());
    assert_eq!(client.request(req).await.unwrap().status(), StatusCode::OK);
    let resp = client
        .request(Request::get(d.url("/health")).body(full("")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["x-envd-version"], "0.6.13");
    let resp = client
        .request(
            Request::options(d.url("/process.Process/List"))
                .body(full(""))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
}

#[tokio::test]
async fn gzip_compressed_unary_request() {
    let d = Daemon::start(&[]);
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(
        serde_json::to_vec(&json!({"path": "/"}))
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    let req = Request::post(d.url("/filesystem.Filesystem/Stat"))
        .header("content-type", "application/json")
        .header("content-encoding", "gzip")
        .body(full(enc.finish().unwrap()))
        .unwrap();
    let resp = h1().request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        body_json(resp).await["entry"]["type"],
        "FILE_TYPE_DIRECTORY"
    );
}

#[tokio::test]
async fn sigterm_is_a_clean_exit() {
    let mut d = Daemon::start(&[]);
    d.guard.signal("TERM");
    let status = d
        .guard
        .wait_exit(Duration::from_secs(15))
        .expect("daemon exited after SIGTERM");
    assert!(
        status.success(),
        "exit status {status}; log:\n{}",
        d.guard.log()
    );
    assert!(d.guard.log().contains("agent-runtime stopped"));
}

#[test]
fn help_documents_the_contract() {
    let out = Command::new(env!("CARGO_BIN_EXE_agent-runtime"))
        .arg("--help")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--listen",
        "--default-user",
        "--default-workdir",
        "--log-format",
        "AGENT_RUNTIME_LISTEN",
        "0.0.0.0:49983",
        "0.6.13",
    ] {
        assert!(text.contains(flag), "--help lacks {flag}:\n{text}");
    }
}

#[test]
fn unknown_default_user_is_a_startup_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_agent-runtime"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--default-user",
            "no-such-user-xyz",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such Unix user"));
}

/// The node simulator and the manager's local mode may run the daemon as an ordinary user with a
/// scratch `$HOME`: the default user is then the daemon's own account, its home is `$HOME`, and
/// asking for another user is a clear `permission_denied`. When the tests run as root, the daemon
/// is started as `nobody` through `setpriv` to cover that case for real.
#[tokio::test]
async fn works_as_a_non_root_user_with_a_scratch_home() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let home = tempfile::Builder::new()
        .prefix("rt-nonroot-")
        .tempdir()
        .unwrap();
    let as_root = agent_runtime::users::euid() == 0;
    let bin = env!("CARGO_BIN_EXE_agent-runtime");
    let mut cmd = if as_root {
        std::os::unix::fs::chown(home.path(), Some(65534), None).unwrap();
        let mut c = Command::new("setpriv");
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(["--listen", &addr.to_string()])
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", home.path());
    let mut guard = ChildGuard::spawn("agent-runtime-nonroot", cmd);
    guard.wait_for_tcp(addr, Duration::from_secs(10));
    let d = Daemon {
        guard,
        addr,
        home: home.path().to_path_buf(),
    };
    let client = h1();
    let events = run_start(&client, &d, "id -u; pwd; echo $HOME", false).await;
    let out = stdout_of(&events);
    let mut lines = out.lines();
    let uid: u32 = lines.next().unwrap().parse().unwrap();
    assert_ne!(uid, 0, "{out}");
    assert_eq!(lines.next().unwrap(), home.path().to_str().unwrap());
    assert_eq!(lines.next().unwrap(), home.path().to_str().unwrap());

    let req = stream_req(&d.url("/process.Process/Start"))
        .header("authorization", "Basic cm9vdDo=")
        .body(full(envelope(0, &start_body("id"))))
        .unwrap();
    let events = Envelopes::new(client.request(req).await.unwrap().into_body())
        .all()
        .await;
    assert_eq!(
        events[0].1["error"]["code"], "permission_denied",
        "{events:?}"
    );

    // Uploads land in the scratch home, owned by the daemon's user.
    let req = Request::post(d.url("/files?path=up.txt"))
        .header("content-type", "application/octet-stream")
        .body(full("data"))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let written = home.path().join("up.txt");
    assert_eq!(std::fs::read_to_string(&written).unwrap(), "data");
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(&written).unwrap().uid(), uid);
}

/// Idle keep-alive connections stay open for `--idle-timeout` (640 s by default, like envd; the
/// SDK reuses pooled connections for up to 300 s) and are closed after it.
#[test]
fn idle_keepalive_connections_follow_the_idle_timeout() {
    use std::io::{Read, Write};
    let d = Daemon::start(&["--idle-timeout", "3"]);
    let req = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut s = std::net::TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 512];
    let mut ask = |s: &mut std::net::TcpStream| -> usize {
        if s.write_all(req).is_err() {
            return 0;
        }
        s.read(&mut buf).unwrap_or(0)
    };
    assert!(ask(&mut s) > 0);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(ask(&mut s) > 0, "connection closed before the idle timeout");
    std::thread::sleep(Duration::from_millis(4500));
    assert_eq!(
        ask(&mut s),
        0,
        "idle connection still open after the idle timeout"
    );
}

/// Output written just before exit is delivered before the end event. The daemon once drained
/// the pipes after exit through tokio's cached readiness and lost the last write under load.
#[tokio::test]
async fn output_written_just_before_exit_is_never_lost() {
    let d = Daemon::start(&[]);
    let client = h1();
    let mut missing = 0;
    for _ in 0..200 {
        let events = run_start(&client, &d, "echo oops >&2", false).await;
        if !events
            .iter()
            .any(|(_, e)| e["event"]["data"]["stderr"].is_string())
        {
            missing += 1;
        }
    }
    assert_eq!(missing, 0, "stderr lost in {missing} of 200 runs");
}
