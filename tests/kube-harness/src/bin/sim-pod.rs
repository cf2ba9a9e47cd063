//! `sim-pod`: the smallest real server a simulated pod can run when a test does not need the
//! agent-runtime itself. It starts in about a millisecond, so pod start-up measurements show the
//! simulator and the apiserver rather than an interpreter. `GET /health` answers 204 (like the
//! agent-runtime); any other request answers 200 with the pod name (`POD_NAME`).
//!
//! It takes the agent-runtime's arguments, so it can stand in for it wherever the contract
//! `--listen <ip:port> --default-workdir <dir>` is all that matters.
//!
//! Usage: sim-pod --listen <ip:port> [--default-workdir <dir>]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};

fn serve(mut conn: TcpStream, name: &str) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 64 * 1024 {
        match conn.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let path = head.split_whitespace().nth(1).unwrap_or("/");
    let response = if path == "/health" {
        "HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n".to_string()
    } else {
        let body = format!("sim-pod {name}\n");
        format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
    };
    let _ = conn.write_all(response.as_bytes());
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut listen: Option<SocketAddr> = None;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => listen = args.next().and_then(|v| v.parse().ok()),
            "--default-workdir" => {
                if let Some(dir) = args.next()
                    && let Err(e) =
                        std::fs::create_dir_all(&dir).and_then(|_| std::env::set_current_dir(&dir))
                {
                    eprintln!("sim-pod: --default-workdir {dir}: {e}");
                    std::process::exit(1);
                }
            }
            "-h" | "--help" => {
                println!("usage: sim-pod --listen <ip:port> [--default-workdir <dir>]");
                return;
            }
            other => {
                eprintln!("sim-pod: unknown argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let Some(listen) = listen else {
        eprintln!("sim-pod: --listen <ip:port> is required");
        std::process::exit(2);
    };
    let listener = TcpListener::bind(listen).unwrap_or_else(|e| {
        eprintln!("sim-pod: bind {listen}: {e}");
        std::process::exit(1);
    });
    let name = std::env::var("POD_NAME").unwrap_or_default();
    eprintln!("sim-pod {name} listening on {listen}");
    for conn in listener.incoming().flatten() {
        let name = name.clone();
        std::thread::spawn(move || serve(conn, &name));
    }
}
