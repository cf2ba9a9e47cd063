//! Runs `wrk` and parses its summary.

use std::process::Command;

use anyhow::{Context, bail};

/// One wrk run's result.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub requests: u64,
    pub rps: f64,
    pub p50_us: f64,
    pub p99_us: f64,
}

fn to_us(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    Some(match unit {
        "us" => n,
        "ms" => n * 1e3,
        "s" => n * 1e6,
        _ => return None,
    })
}

/// Parses `wrk --latency` output.
pub fn parse(out: &str) -> anyhow::Result<Run> {
    if let Some(line) = out.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        bail!("wrk saw errors ({line}); output:\n{out}");
    }
    if out
        .lines()
        .any(|l| l.trim_start().starts_with("Socket errors"))
    {
        bail!("wrk saw socket errors; output:\n{out}");
    }
    let rps = out
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no Requests/sec in:\n{out}"))?;
    let pct = |p: &str| {
        out.lines()
            .find_map(|l| {
                let mut it = l.split_whitespace();
                (it.next() == Some(p))
                    .then(|| it.next().and_then(to_us))
                    .flatten()
            })
            .with_context(|| format!("no {p} latency in:\n{out}"))
    };
    let requests = out
        .lines()
        .find_map(|l| {
            l.trim()
                .split_once(" requests in ")
                .and_then(|(n, _)| n.parse().ok())
        })
        .with_context(|| format!("no request count in:\n{out}"))?;
    Ok(Run {
        requests,
        rps,
        p50_us: pct("50%")?,
        p99_us: pct("99%")?,
    })
}

/// Runs wrk against `url` with the sandbox headers.
pub fn run(
    url: &str,
    headers: &[(&str, String)],
    connections: u32,
    seconds: u64,
) -> anyhow::Result<Run> {
    let mut cmd = Command::new("wrk");
    cmd.args([
        "-t1",
        &format!("-c{connections}"),
        &format!("-d{seconds}s"),
        "--latency",
    ]);
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    cmd.arg(url);
    let out = cmd.output().context("run wrk (Debian package `wrk`)")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 1s test @ http://127.0.0.1:1/\n  1 threads and 8 connections\n  Latency Distribution\n     50%  101.00us\n     75%  1.20ms\n     90%    2.00ms\n     99%    3.50ms\n  1000 requests in 1.00s, 1.00KB read\nRequests/sec:   1000.50\nTransfer/sec:      1.00KB\n";
        let r = parse(out).unwrap();
        assert_eq!(r.rps, 1000.5);
        assert_eq!(r.requests, 1000);
        assert_eq!(r.p50_us, 101.0);
        assert_eq!(r.p99_us, 3500.0);
        assert!(parse(&format!("{out}  Non-2xx or 3xx responses: 5\n")).is_err());
    }
}
