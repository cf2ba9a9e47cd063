//! sandbox-xds benchmark (not a test). For each table size (default 10,000 and 100,000 routes):
//!
//! - **full sync**: a fresh gateway (real Envoy 1.40 + the release module) connects and receives
//!   the whole table; time from Envoy start to "every route acknowledged";
//! - **propagation**: a sandbox becomes running (an in-process publish into sandbox-xds, which is
//!   what the Kubernetes watch does on a status change) → the first request through the gateway
//!   that reaches it; p50/p99 over many samples, polled on a keep-alive connection;
//! - **server delta cost**: the time the server needs to compute one stream's delta for a single
//!   change, which must not grow with the table.
//!
//! The ratio printed for each metric is 100k / 10k (1.0 = independent of table size).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use gateway_tests::{AdsGatewayBuilder, Upstream};
use sandbox_xds::cache::Subscription;
use sandbox_xds_wire::SANDBOX_ROUTE_TYPE_URL;
use sandbox_xds_wire::v1::WaitForRouteRequest;
use sandbox_xds_wire::v1::route_sync_client::RouteSyncClient;
use sandbox_xds_wire::v1::sandbox_route::State;
use xds_tests::{Xds, route};

#[derive(Debug, Parser)]
struct Args {
    /// Table sizes to measure at.
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize, 100_000])]
    sizes: Vec<usize>,
    /// Propagation samples per size.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// Also write the results as Markdown to this file.
    #[arg(long)]
    markdown: Option<std::path::PathBuf>,
}

/// A keep-alive HTTP/1.1 connection to the gateway, for tight polling.
struct Poller {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Poller {
    fn connect(addr: SocketAddr) -> anyhow::Result<Poller> {
        let s = TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Poller {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// Status of `GET /` for sandbox `id` on `port`.
    fn status(&mut self, id: &str, port: u16) -> anyhow::Result<u16> {
        write!(
            self.w,
            "GET / HTTP/1.1\r\nhost: gw\r\ne2b-sandbox-id: {id}\r\ne2b-sandbox-port: {port}\r\n\r\n"
        )?;
        let mut line = String::new();
        self.r.read_line(&mut line)?;
        let status = line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("status line")?;
        let mut len = 0usize;
        loop {
            line.clear();
            self.r.read_line(&mut line)?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.to_ascii_lowercase().strip_prefix("content-length:") {
                len = v.trim().parse()?;
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body)?;
        Ok(status)
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

struct SizeResult {
    size: usize,
    full_sync: Duration,
    p50_ms: f64,
    p99_ms: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    delta_us: f64,
}

fn measure(size: usize, samples: usize, up: &Upstream) -> anyhow::Result<SizeResult> {
    let xds = Xds::start();
    let routes = xds.routes();
    eprintln!("[{size}] publishing {size} routes");
    routes.resync(
        (0..size)
            .map(|i| {
                route(
                    &format!("sbx-{i:06}"),
                    &format!("10.{}.{}.{}", (i >> 16) & 255, (i >> 8) & 255, i & 255),
                    1_000 + i as u64,
                    State::Running,
                )
            })
            .collect(),
    );

    // Full sync of a fresh gateway.
    let t0 = Instant::now();
    let gw = AdsGatewayBuilder::new(xds.grpc, &format!("bench-{size}")).start();
    let w = xds.wait_for_route(&format!("sbx-{:06}", size - 1), 0, Duration::from_secs(300));
    if !w.synced {
        bail!("gateway did not sync {size} routes: {w:?}");
    }
    let full_sync = t0.elapsed();
    eprintln!("[{size}] full sync in {full_sync:?}");

    // Propagation: publish → first successful request.
    let mut poller = Poller::connect(gw.addr)?;
    let mut rv = 10_000_000u64;
    let mut lat = Vec::with_capacity(samples);
    let mut ack = Vec::with_capacity(samples);
    for i in 0..samples {
        let id = format!("probe-{i}");
        if poller.status(&id, up.port())? != 502 {
            bail!("{id} routable before it was published");
        }
        rv += 1;
        let start = Instant::now();
        routes.upsert(route(&id, "127.0.0.1", rv, State::Running));
        loop {
            if poller.status(&id, up.port())? == 200 {
                break;
            }
            if start.elapsed() > Duration::from_secs(10) {
                bail!("{id} not routable after 10 s");
            }
        }
        lat.push(start.elapsed().as_secs_f64() * 1e3);
    }
    // The server's view: publish → every gateway acknowledged (WaitForRoute on one persistent
    // client, as the manager holds one).
    let rt = xds.runtime();
    let channel = rt.block_on(
        tonic::transport::Endpoint::from_shared(format!("http://{}", xds.grpc))?
            .tcp_nodelay(true)
            .connect(),
    )?;
    let mut client = RouteSyncClient::new(channel);
    for i in 0..samples {
        let id = format!("ack-{i}");
        rv += 1;
        let start = Instant::now();
        routes.upsert(route(&id, "127.0.0.1", rv, State::Running));
        let w = rt
            .block_on(client.wait_for_route(WaitForRouteRequest {
                sandbox_id: id.clone(),
                min_resource_version: rv,
                timeout_ms: 10_000,
                min_gateways: 1,
                ..Default::default()
            }))?
            .into_inner();
        if !w.synced {
            bail!("{id} not acknowledged: {w:?}");
        }
        ack.push(start.elapsed().as_secs_f64() * 1e3);
    }
    lat.sort_by(f64::total_cmp);
    ack.sort_by(f64::total_cmp);

    // The server's delta computation for one change, on a stream that holds the whole table.
    let cache = &xds.server.cache;
    let mut sub = Subscription {
        wildcard: true,
        ..Default::default()
    };
    cache
        .delta(SANDBOX_ROUTE_TYPE_URL, &mut sub)
        .context("initial delta")?;
    let reps = 2_000;
    let mut spent = Duration::ZERO;
    for i in 0..reps {
        rv += 1;
        routes.upsert(route(
            &format!("probe-{}", i % samples.max(1)),
            "127.0.0.1",
            rv,
            State::Running,
        ));
        let t = Instant::now();
        let d = cache
            .delta(SANDBOX_ROUTE_TYPE_URL, &mut sub)
            .context("delta")?;
        spent += t.elapsed();
        if d.resources.len() != 1 {
            bail!("expected a one-route delta, got {}", d.resources.len());
        }
    }
    let delta_us = spent.as_secs_f64() * 1e6 / reps as f64;
    drop(poller);
    drop(gw);
    Ok(SizeResult {
        size,
        full_sync,
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        ack_p50_ms: percentile(&ack, 0.5),
        ack_p99_ms: percentile(&ack, 0.99),
        delta_us,
    })
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let up = Upstream::start("probe", "127.0.0.1");
    let mut results = Vec::new();
    for &size in &args.sizes {
        results.push(measure(size, args.samples, &up)?);
    }
    let mut md = String::from(
        "| routes in the table | full sync of a new gateway | publish → first successful request p50 / p99 | publish → WaitForRoute returns p50 / p99 | server delta for one change |\n|---|---|---|---|---|\n",
    );
    for r in &results {
        md.push_str(&format!(
            "| {} | {:.2} s | {:.2} ms / {:.2} ms | {:.2} ms / {:.2} ms | {:.1} µs |\n",
            r.size,
            r.full_sync.as_secs_f64(),
            r.p50_ms,
            r.p99_ms,
            r.ack_p50_ms,
            r.ack_p99_ms,
            r.delta_us
        ));
    }
    if let (Some(small), Some(big)) = (results.first(), results.last())
        && results.len() > 1
    {
        md.push_str(&format!(
            "\nRatios {} / {} routes: propagation p99 {:.2}×, server delta cost {:.2}× (1.0 = independent of table size). Budget: propagation p99 ≤ 50 ms at 10,000 routes: measured {:.2} ms.\n",
            big.size,
            small.size,
            big.p99_ms / small.p99_ms,
            big.delta_us / small.delta_us,
            results.iter().find(|r| r.size == 10_000).map_or(f64::NAN, |r| r.p99_ms),
        ));
    }
    println!("{md}");
    if let Some(p) = args.markdown {
        std::fs::write(p, md)?;
    }
    Ok(())
}
