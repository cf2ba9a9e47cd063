//! envd's `GET /metrics` JSON: CPU, memory and disk of the machine the daemon runs on.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

/// Aggregate CPU counters from `/proc/stat` (busy, total) in clock ticks.
pub fn parse_proc_stat(text: &str) -> Option<(u64, u64)> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user/nice)
    let total: u64 = v.iter().take(8).sum();
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total.saturating_sub(idle), total))
}

/// `/proc/meminfo` → (total, available, cached) in bytes.
pub fn parse_meminfo(text: &str) -> Option<(u64, u64, u64)> {
    let get = |key: &str| {
        text.lines()
            .find(|l| l.starts_with(key) && l[key.len()..].starts_with(':'))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|x| x.parse::<u64>().ok())
            .map(|kb| kb * 1024)
    };
    let total = get("MemTotal")?;
    let available = get("MemAvailable").unwrap_or_else(|| get("MemFree").unwrap_or(0));
    let cached = get("Cached").unwrap_or(0) + get("Buffers").unwrap_or(0);
    Some((total, available, cached))
}

/// CPU utilisation since the previous sample (or over a short window for the first one).
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Mutex<Option<(Instant, u64, u64)>>,
}

impl CpuSampler {
    fn read() -> Option<(u64, u64)> {
        parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
    }

    /// Percentage of CPU time spent busy, 0–100.
    pub async fn percent(&self) -> f64 {
        let prev = *self.last.lock().unwrap_or_else(|e| e.into_inner());
        let prev = match prev {
            Some((t, b, tot)) if t.elapsed() >= Duration::from_millis(100) => Some((b, tot)),
            _ => {
                let first = Self::read();
                tokio::time::sleep(Duration::from_millis(100)).await;
                first
            }
        };
        let Some(now) = Self::read() else { return 0.0 };
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some((Instant::now(), now.0, now.1));
        match prev {
            Some((b0, t0)) if now.1 > t0 => {
                let pct = (now.0.saturating_sub(b0)) as f64 / (now.1 - t0) as f64 * 100.0;
                (pct * 100.0).round() / 100.0
            }
            _ => 0.0,
        }
    }
}

fn disk(path: &str) -> (u64, u64) {
    std::ffi::CString::new(path)
        .ok()
        .and_then(|c| crate::sys::disk_usage(&c).ok())
        .unwrap_or((0, 0))
}

/// The metrics document.
pub async fn snapshot(cpu: &CpuSampler) -> Value {
    let cpu_count = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let cpu_used_pct = cpu.percent().await;
    let (mem_total, mem_avail, mem_cache) = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .as_deref()
        .and_then(parse_meminfo)
        .unwrap_or((0, 0, 0));
    let mem_used = mem_total.saturating_sub(mem_avail);
    let (disk_used, disk_total) = disk("/");
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    json!({
        "ts": ts,
        "cpu_count": cpu_count,
        "cpu_used_pct": cpu_used_pct,
        "mem_total": mem_total,
        "mem_used": mem_used,
        "mem_cache": mem_cache,
        "mem_total_mib": mem_total / (1 << 20),
        "mem_used_mib": mem_used / (1 << 20),
        "disk_used": disk_used,
        "disk_total": disk_total,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(stat), Some((150, 1000)));
        let mem = "MemTotal:       1000 kB\nMemFree:         100 kB\nMemAvailable:    400 kB\nBuffers:          10 kB\nCached:           90 kB\nSwapCached: 5 kB\n";
        assert_eq!(parse_meminfo(mem), Some((1_024_000, 409_600, 102_400)));
    }

    #[tokio::test]
    async fn snapshot_has_every_field() {
        let v = snapshot(&CpuSampler::default()).await;
        for k in [
            "ts",
            "cpu_count",
            "cpu_used_pct",
            "mem_total",
            "mem_used",
            "mem_cache",
            "mem_total_mib",
            "mem_used_mib",
            "disk_used",
            "disk_total",
        ] {
            assert!(v.get(k).is_some(), "{k} missing");
        }
        assert!(v["mem_total"].as_u64().unwrap() > 0);
        assert!(v["disk_total"].as_u64().unwrap() > 0);
    }
}
