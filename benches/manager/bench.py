"""make bench-manager: how fast the embedded stack hands out sandboxes, with the real E2B SDK.

Starts the stack exactly as `make run` does (scripts/run-local.sh, release binaries) with a
template `warm` (a large pool) and a template `cold` (no pool), then measures:

  baseline   starting an agent-runtime process directly until /health answers (what a create
             from an empty pool must at least pay), in the same run
  warm       Sandbox.create() until it returns (claim + /init + route acknowledged by the
             gateway), 1 client and 20 concurrent clients (threads); also the raw
             POST /v2/sandboxes without the SDK at 20 concurrent, to separate client cost
  cold       the same from an empty pool (create-on-no-stock)
  first cmd  Sandbox.create() + the first commands.run("true") through the gateway

Budget (DESIGN.md): a warm Sandbox.create() returns in p50 <= 10 ms and p99 <= 50 ms at 20
concurrent clients. Prints one table; never fails on timings.

usage: python benches/manager/bench.py [--rounds N]
"""

import argparse
import concurrent.futures
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tests" / "manager"))
from conftest import Stack  # noqa: E402


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def row(name, xs):
    ms = [x * 1000 for x in xs]
    return f"{name:<48} n={len(ms):<4} p50 {pct(ms, 50):8.2f} ms   p99 {pct(ms, 99):8.2f} ms   mean {statistics.mean(ms):8.2f} ms"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def baseline_starts(n):
    """Spawn agent-runtime directly and wait until /health answers 204."""
    runtime = os.environ["AGENT_RUNTIME_BIN"]
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    out = []
    for i in range(n):
        home = tempfile.mkdtemp(prefix="bench-rt-")
        ip = f"127.2.0.{i % 250 + 1}"
        t = time.perf_counter()
        p = subprocess.Popen([runtime, "--listen", f"{ip}:49983", "--default-user", user, "--default-workdir", home],
                             env={"PATH": os.environ["PATH"], "HOME": home}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while True:
            try:
                with urllib.request.urlopen(f"http://{ip}:49983/health", timeout=1) as r:
                    if r.status == 204:
                        break
            except OSError:
                time.sleep(0.001)
        out.append(time.perf_counter() - t)
        p.terminate()
        p.wait()
        subprocess.run(["rm", "-rf", home])
    return out


def wait_pool(stack, template, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, text, _ = stack.request("GET", "/metrics", key=None)
        for line in str(text).splitlines():
            if line.startswith(f'sandbox_manager_pool_available{{template="{template}"}}'):
                if float(line.split()[-1]) >= n:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"pool {template} did not reach {n}")


def sdk_creates(stack, template, clients, total, first_command=False):
    from e2b import Sandbox

    opts = stack.sdk_opts()

    def one(_):
        t = time.perf_counter()
        s = Sandbox.create(template=template, **opts)
        created = time.perf_counter() - t
        if first_command:
            assert s.commands.run("true").exit_code == 0
        total_t = time.perf_counter() - t
        return s, created, total_t

    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(one, range(total)))
    for s, _, _ in results:
        s.kill()
    return [r[1] for r in results], [r[2] for r in results]


def raw_creates(stack, template, clients, total):
    body = json.dumps({"templateID": template, "metadata": {}, "envVars": {}}).encode()

    def one(_):
        req = urllib.request.Request(stack.api_url + "/v2/sandboxes", data=body, method="POST",
                                     headers={"x-api-key": stack.api_key, "content-type": "application/json"})
        t = time.perf_counter()
        with urllib.request.urlopen(req, timeout=60) as r:
            sid = json.loads(r.read())["sandboxID"]
        return sid, time.perf_counter() - t

    with concurrent.futures.ThreadPoolExecutor(clients) as ex:
        results = list(ex.map(one, range(total)))
    for sid, _ in results:
        stack.request("DELETE", f"/sandboxes/{sid}")
    return [r[1] for r in results]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5, help="rounds of 20 concurrent creates")
    args = ap.parse_args()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-manager-"))
    templates = run_dir / "templates.yaml"
    templates.write_text("templates:\n- id: warm\n  pool_size: 40\n- id: cold\n  pool_size: 0\n")
    stack = Stack.start(run_dir / "stack", pool_size=0, TEMPLATES=str(templates))
    rows = []
    try:
        base = baseline_starts(20)
        rows.append(row("baseline: start agent-runtime until /health", base))
        wait_pool(stack, "warm", 40)
        warm1 = []
        for _ in range(args.rounds):
            c, _ = sdk_creates(stack, "warm", 1, 10)
            warm1 += c
            wait_pool(stack, "warm", 40)
        rows.append(row("warm Sandbox.create(), 1 client", warm1))
        warm20 = []
        for _ in range(args.rounds):
            c, _ = sdk_creates(stack, "warm", 20, 20)
            warm20 += c
            wait_pool(stack, "warm", 40)
        rows.append(row("warm Sandbox.create(), 20 concurrent", warm20))
        raw20 = []
        for _ in range(args.rounds):
            raw20 += raw_creates(stack, "warm", 20, 20)
            wait_pool(stack, "warm", 40)
        rows.append(row("warm POST /v2/sandboxes (no SDK), 20 concurrent", raw20))
        first = []
        for _ in range(args.rounds):
            _, t = sdk_creates(stack, "warm", 1, 10, first_command=True)
            first += t
            wait_pool(stack, "warm", 40)
        rows.append(row("warm create + first commands.run, 1 client", first))
        cold1, _ = sdk_creates(stack, "cold", 1, 10)
        rows.append(row("empty pool Sandbox.create(), 1 client", cold1))
        cold20 = []
        for _ in range(max(1, args.rounds // 2)):
            c, _ = sdk_creates(stack, "cold", 20, 20)
            cold20 += c
        rows.append(row("empty pool Sandbox.create(), 20 concurrent", cold20))
        _, cold_first = sdk_creates(stack, "cold", 1, 10, first_command=True)
        rows.append(row("empty pool create + first commands.run, 1 client", cold_first))
    finally:
        stack.stop()
    print()
    print("\n".join(rows))
    print()
    b = statistics.median(base)
    print(f"warm create p50 / baseline start p50 = {pct(warm1, 50) / b:.3f} (1 client), {pct(warm20, 50) / b:.3f} (20 concurrent)")
    print(f"budget warm 20 concurrent: p50 {pct(warm20, 50) * 1000:.2f} ms (<= 10), p99 {pct(warm20, 99) * 1000:.2f} ms (<= 50): "
          f"{'met' if pct(warm20, 50) <= 0.010 and pct(warm20, 99) <= 0.050 else 'NOT met'}")


if __name__ == "__main__":
    main()
