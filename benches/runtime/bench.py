#!/usr/bin/env python3
"""agent-runtime benchmark, driven through the real e2b SDK (2.63.0).

Measures, against a release build of the daemon on loopback:
  * `commands.run("true")` round trips: requests/s, p50, p99 (sequential, one client);
    baseline: running the same `/bin/bash -l -c true` locally with subprocess, in the same run.
  * 100 MB upload (`files.write` streamed octet-stream, and the default multipart) and download
    (`files.read(format="bytes")`, which negotiates gzip like envd, and a raw identity GET);
    baseline: writing / reading the same 100 MB on the local disk from this process.

Usage: AGENT_RUNTIME_BIN=target/release/agent-runtime python benches/runtime/bench.py [--runs N] [--mb M]
(`make bench-runtime` builds the release binary and runs this.)
"""

import argparse
import hashlib
import io
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
from e2b import Sandbox


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(xs, p):
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))
    return xs[k]


class StandIn(BaseHTTPRequestHandler):
    """Answers POST /v2/sandboxes so the SDK gets a sandbox object pointing at the daemon."""

    def log_message(self, *a):
        pass

    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        body = json.dumps({"templateID": "base", "sandboxID": "ibench", "clientID": "6532622b",
                           "envdVersion": "0.6.13", "domain": None}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--mb", type=int, default=100)
    args = ap.parse_args()
    binary = os.environ.get("AGENT_RUNTIME_BIN")
    if not binary or not os.access(binary, os.X_OK):
        raise SystemExit("AGENT_RUNTIME_BIN must point at the agent-runtime binary (make bench-runtime)")

    work = tempfile.mkdtemp(prefix="agent-runtime-bench-")
    home = os.path.join(work, "home")
    os.mkdir(home)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = open(os.path.join(work, "daemon.log"), "wb")
    daemon = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--default-workdir", home,
         "--default-user", __import__("pwd").getpwuid(os.geteuid()).pw_name],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "AGENT_RUNTIME_LOG": "warn"},
        stdout=log, stderr=subprocess.STDOUT)
    api = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    threading.Thread(target=api.serve_forever, daemon=True).start()
    try:
        for _ in range(500):
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1)
                break
            except Exception:
                time.sleep(0.02)
        sbx = Sandbox.create(api_key="e2b_" + "0" * 40, api_url=f"http://127.0.0.1:{api.server_address[1]}",
                             sandbox_url=url, debug=False)
        rows = []

        # --- command round trips ---
        for _ in range(20):
            sbx.commands.run("true")
        lat = []
        t0 = time.perf_counter()
        for _ in range(args.runs):
            s = time.perf_counter()
            sbx.commands.run("true")
            lat.append(time.perf_counter() - s)
        total = time.perf_counter() - t0
        # Baseline: the same login shell, with the environment the daemon gives its processes.
        user = __import__("pwd").getpwuid(os.geteuid()).pw_name
        shell_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "USER": user, "LOGNAME": user,
                     "E2B_SANDBOX": "true"}
        base = []
        for _ in range(min(args.runs, 200)):
            s = time.perf_counter()
            subprocess.run(["/bin/bash", "-l", "-c", "true"], check=True, env=shell_env, cwd=home)
            base.append(time.perf_counter() - s)
        sdk_p50, base_p50 = statistics.median(lat), statistics.median(base)
        rows.append(("commands.run(\"true\")", f"{args.runs / total:.0f} req/s",
                     f"p50 {sdk_p50 * 1e3:.2f} ms, p99 {percentile(lat, 99) * 1e3:.2f} ms",
                     f"local bash -l -c true p50 {base_p50 * 1e3:.2f} ms",
                     f"{sdk_p50 / base_p50:.2f}x (+{(sdk_p50 - base_p50) * 1e3:.2f} ms)"))

        # --- file transfer ---
        size = args.mb << 20
        data = os.urandom(size)
        digest = hashlib.sha256(data).hexdigest()

        # Baselines: the best of three local writes / reads of the same bytes (page cache).
        local_path = os.path.join(work, "local.bin")
        local_write = local_read = 0.0
        for _ in range(3):
            s = time.perf_counter()
            with open(local_path, "wb") as f:
                f.write(data)
            local_write = max(local_write, size / (time.perf_counter() - s) / 1e6)
            s = time.perf_counter()
            with open(local_path, "rb") as f:
                assert len(f.read()) == size
            local_read = max(local_read, size / (time.perf_counter() - s) / 1e6)
            os.remove(local_path)

        def timed(fn, repeat=3):
            """Median MB/s of `repeat` runs, and the last result."""
            rates, out = [], None
            for _ in range(repeat):
                out = None
                s = time.perf_counter()
                out = fn()
                rates.append(size / (time.perf_counter() - s) / 1e6)
            return statistics.median(rates), out

        up_stream, _ = timed(lambda: sbx.files.write("big-stream.bin", io.BytesIO(data)))
        assert os.path.getsize(os.path.join(home, "big-stream.bin")) == size
        up_multi, _ = timed(lambda: sbx.files.write("big-multipart.bin", data))
        down_sdk, back = timed(lambda: sbx.files.read("big-stream.bin", format="bytes"))
        assert hashlib.sha256(bytes(back)).hexdigest() == digest, "download corrupted"
        del back

        def raw_get():
            with httpx.Client(timeout=120) as c:
                r = c.get(f"{url}/files", params={"path": "big-multipart.bin"}, headers={"Accept-Encoding": "identity"})
                r.raise_for_status()
                return r.content
        down_raw, back = timed(raw_get)
        assert hashlib.sha256(back).hexdigest() == digest, "download corrupted"
        del back

        def curl(encoding):
            rates = []
            for _ in range(3):
                out = subprocess.run(["curl", "-s", "-o", "/dev/null", "-w", "%{speed_download}", "-H",
                                      f"Accept-Encoding: {encoding}", f"{url}/files?path=big-multipart.bin"],
                                     capture_output=True, text=True, check=True).stdout
                rates.append(float(out) / 1e6)
            return statistics.median(rates)

        curl_down = curl("identity") if shutil.which("curl") else None
        curl_gzip = curl("gzip") if shutil.which("curl") else None

        rows.append((f"upload {args.mb} MB, files.write(BytesIO) octet-stream", f"{up_stream:.0f} MB/s", "",
                     f"local write {local_write:.0f} MB/s", f"{up_stream / local_write:.2f}x"))
        rows.append((f"upload {args.mb} MB, files.write(bytes) multipart", f"{up_multi:.0f} MB/s", "",
                     f"local write {local_write:.0f} MB/s", f"{up_multi / local_write:.2f}x"))
        rows.append((f"download {args.mb} MB, files.read(bytes) (gzip negotiated)", f"{down_sdk:.0f} MB/s", "",
                     f"local read {local_read:.0f} MB/s", f"{down_sdk / local_read:.2f}x"))
        rows.append((f"download {args.mb} MB, raw GET identity (httpx)", f"{down_raw:.0f} MB/s", "",
                     f"local read {local_read:.0f} MB/s", f"{down_raw / local_read:.2f}x"))
        if curl_down is not None:
            rows.append((f"download {args.mb} MB, raw GET identity (curl)", f"{curl_down:.0f} MB/s", "",
                         f"local read {local_read:.0f} MB/s", f"{curl_down / local_read:.2f}x"))
            rows.append((f"download {args.mb} MB, raw GET gzip (curl; incompressible data goes as stored blocks)",
                         f"{curl_gzip:.0f} MB/s", "", f"local read {local_read:.0f} MB/s", f"{curl_gzip / local_read:.2f}x"))

        print(f"agent-runtime benchmark: {args.runs} round trips, {args.mb} MB random data (transfers: median of 3), loopback, "
              f"{os.cpu_count()} CPUs")
        print("| what | throughput | latency | baseline (same run) | ratio vs baseline |")
        print("|---|---|---|---|---|")
        for r in rows:
            print("| " + " | ".join(r) + " |")
    finally:
        api.shutdown()
        daemon.terminate()
        daemon.wait(timeout=20)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
