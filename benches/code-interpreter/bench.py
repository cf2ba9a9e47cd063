"""make bench-code-interpreter: run_code through the whole stack against a bare kernel.

Starts the stack exactly as `make run` does (scripts/run-local.sh, release binaries, the
committed config/local-templates.yaml with a larger code-interpreter-v1 pool) and measures, in
the same run:

  baseline    `1+1` on a bare ipykernel over ZeroMQ with jupyter_client (bare_kernel.py): the
              kernel's own cost, the floor of any run_code
  service     POST /execute `1+1` straight to the sandbox's code-interpreter (HTTP keep-alive),
              no gateway
  gateway     the same request through the gateway (e2b-sandbox-id / e2b-sandbox-port headers)
  SDK         Sandbox.run_code("1+1") with e2b-code-interpreter 2.11.5 (which opens a new
              connection per call)
  first       Sandbox.create("code-interpreter-v1") from a warm pool until the first run_code
              result (the first call also fetches the sandbox env vars and checks the token)

Budgets (issue 12): run_code round trip within 2 ms of the baseline; create-to-first-result
p50 <= 50 ms from a warm pool. Prints one table and the verdicts; never fails on timings.

usage: python benches/code-interpreter/bench.py [--rounds N] [--creates N]
"""

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "manager"))
from conftest import Stack  # noqa: E402

POOL = 6
CODE = json.dumps({"code": "1+1", "context_id": None, "language": None, "env_vars": None}).encode()


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def row(name, xs):
    ms = [x * 1000 for x in xs]
    return f"{name:<52} n={len(ms):<4} p50 {pct(ms, 50):7.2f} ms   p99 {pct(ms, 99):7.2f} ms   mean {statistics.mean(ms):7.2f} ms"


def wait_pool(stack, n, timeout=300):
    deadline = time.time() + timeout
    while time.time() < deadline:
        _, text, _ = stack.request("GET", "/metrics", key=None)
        for line in str(text).splitlines():
            if line.startswith('sandbox_manager_pool_available{template="code-interpreter-v1"}'):
                if float(line.split()[-1]) >= n:
                    return
        time.sleep(0.2)
    raise RuntimeError(f"the code-interpreter-v1 pool did not reach {n}")


def baseline(rounds):
    venv = Path(os.environ["CODE_INTERPRETER_KERNELS_VENV"])
    startup = ROOT / "runtime" / "code-interpreter" / "kernel" / "ipython_startup.py"
    out = subprocess.run([str(venv / "bin" / "python"), str(Path(__file__).with_name("bare_kernel.py")),
                          str(startup), str(rounds)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def raw_execute(host, port, headers, rounds):
    """POST /execute over one keep-alive connection; the whole NDJSON body is read each time."""
    conn = http.client.HTTPConnection(host, port, timeout=60)
    out = []
    try:
        for i in range(rounds + 20):
            t = time.perf_counter()
            conn.request("POST", "/execute", body=CODE, headers={"content-type": "application/json", **headers})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200 and b'"text":"2"' in body, (r.status, body)
            if i >= 20:
                out.append(time.perf_counter() - t)
    finally:
        conn.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=300, help="run_code round trips per row")
    ap.add_argument("--creates", type=int, default=20, help="creates for create-to-first-result")
    args = ap.parse_args()
    from e2b_code_interpreter import Sandbox

    run_dir = Path(tempfile.mkdtemp(prefix="bench-code-interpreter-"))
    stack = Stack.start(run_dir / "stack", pool_size=0, TEMPLATES=str(ROOT / "config" / "local-templates.yaml"),
                        CODE_INTERPRETER_POOL_SIZE=str(POOL))
    rows = []
    try:
        wait_pool(stack, POOL)
        base = baseline(args.rounds)
        rows.append(row("baseline: bare ipykernel execute over ZeroMQ", base))

        opts = stack.sdk_opts()
        sbx = Sandbox.create(metadata={"e2b.agents.kruise.io/return-sandbox-ip": "true"}, **opts)
        try:
            ip = sbx.get_info().metadata["e2b.agents.kruise.io/sandbox-ip"]
            token = {"x-access-token": sbx._envd_access_token}
            direct = raw_execute(ip, 49999, token, args.rounds)
            rows.append(row("POST /execute straight to the service (keep-alive)", direct))
            gw = urllib.parse.urlsplit(stack.gateway_url)
            via = raw_execute(gw.hostname, gw.port,
                              {**token, "e2b-sandbox-id": sbx.sandbox_id, "e2b-sandbox-port": "49999"}, args.rounds)
            rows.append(row("POST /execute through the gateway (keep-alive)", via))
            sdk = []
            for i in range(args.rounds + 20):
                t = time.perf_counter()
                assert sbx.run_code("1+1").text == "2"
                if i >= 20:
                    sdk.append(time.perf_counter() - t)
            rows.append(row("Sandbox.run_code('1+1') through the gateway (SDK)", sdk))
        finally:
            sbx.kill()

        wait_pool(stack, POOL)
        first, creates = [], []
        for i in range(args.creates):
            t = time.perf_counter()
            s = Sandbox.create(**opts)
            created = time.perf_counter() - t
            assert s.run_code("1+1").text == "2"
            first.append(time.perf_counter() - t)
            creates.append(created)
            s.kill()
            wait_pool(stack, POOL)
        rows.append(row("warm Sandbox.create() alone", creates))
        rows.append(row("warm Sandbox.create() + first run_code result", first))
    finally:
        stack.stop()
    print()
    print("\n".join(rows))
    print()
    b50, b99 = pct(base, 50), pct(base, 99)
    s50, s99 = pct(sdk, 50), pct(sdk, 99)
    g50 = pct(via, 50)
    print(f"run_code over baseline: SDK p50 +{(s50 - b50) * 1000:.2f} ms, p99 +{(s99 - b99) * 1000:.2f} ms; "
          f"raw through the gateway p50 +{(g50 - b50) * 1000:.2f} ms; straight to the service p50 "
          f"+{(pct(direct, 50) - b50) * 1000:.2f} ms")
    print(f"budget run_code within 2 ms of the baseline (p50): SDK {'met' if s50 - b50 <= 0.002 else 'NOT met'}, "
          f"raw through the gateway {'met' if g50 - b50 <= 0.002 else 'NOT met'}")
    f50 = pct(first, 50)
    print(f"budget create-to-first-result p50 <= 50 ms: {f50 * 1000:.2f} ms, {'met' if f50 <= 0.050 else 'NOT met'}")


if __name__ == "__main__":
    main()
