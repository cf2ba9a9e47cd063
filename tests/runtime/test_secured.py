"""A sandbox created the way the platform creates one: initialised through `POST /init` with an
access token and env vars, reported as envdVersion 0.6.13. Covers the token, signed URLs, the
SDK's feature gates at 0.6.13, `/init` re-init rules, `/envs`, `/metrics`, and shutdown."""

import json
import signal
import subprocess
import time
import urllib.error
import urllib.request

import httpx
import pytest

from conftest import Daemon, free_port
from e2b import AuthenticationException, FileType

UNAUTHORIZED = {
    "code": 401,
    "message": "unauthorized access, please provide a valid access token or method signing if supported",
}


def test_sdk_works_with_the_token(secure_sandbox, secure_runtime):
    daemon, cp = secure_runtime
    assert secure_sandbox._envd_version.public == "0.6.13"
    r = secure_sandbox.commands.run('echo "$FROM_CREATE $E2B_SANDBOX_ID $E2B_SANDBOX"')
    value, sandbox_id, flag = r.stdout.split()
    assert value == "create-value"
    assert sandbox_id == secure_sandbox.sandbox_id
    assert flag == "true"
    assert cp.creates[-1]["envVars"] == {"FROM_CREATE": "create-value"}
    assert secure_sandbox.is_running() is True


def test_requests_without_the_token_are_refused(secure_runtime):
    daemon, cp = secure_runtime
    with httpx.Client(base_url=daemon.url) as c:
        r = c.post("/process.Process/List", json={})
        assert r.status_code == 401
        assert r.json() == UNAUTHORIZED
        r = c.post("/process.Process/List", json={}, headers={"X-Access-Token": "wrong"})
        assert r.status_code == 401
        assert c.post("/process.Process/List", json={}, headers={"X-Access-Token": cp.token}).status_code == 200
        assert c.get("/envs").status_code == 401
        assert c.get("/health").status_code == 204
        # /files without a token or signature:
        r = c.get("/files", params={"path": "x"})
        assert r.status_code == 401
        assert r.json() == {"code": 401, "message": "missing signature query parameter"}
        r = c.get("/files", params={"path": "x"}, headers={"X-Access-Token": "wrong"})
        assert r.json() == {"code": 401, "message": "access token present in header but does not match"}


def test_sdk_without_the_token_gets_authentication_errors(secure_runtime):
    daemon, cp = secure_runtime
    from conftest import API_KEY
    from e2b import Sandbox

    # The stand-in leaves envdAccessToken out of its answer when asked to.
    sbx = Sandbox.create(metadata={"omit_token": "1"}, api_key=API_KEY, api_url=cp.url, sandbox_url=daemon.url, debug=False)
    with pytest.raises(AuthenticationException) as e:
        sbx.commands.run("true")
    assert "unauthorized access" in str(e.value)
    with pytest.raises(AuthenticationException):
        sbx.files.read("anything.txt")


def test_signed_download_and_upload_urls(secure_sandbox):
    secure_sandbox.files.write("signed.txt", "signed content")
    url = secure_sandbox.download_url("signed.txt")
    assert "signature=v1_" in url
    with urllib.request.urlopen(url) as r:
        assert r.status == 200
        assert r.read() == b"signed content"
    with urllib.request.urlopen(secure_sandbox.download_url("signed.txt", use_signature_expiration=120)) as r:
        assert r.read() == b"signed content"
    up = secure_sandbox.upload_url("uploaded.txt", use_signature_expiration=120)
    r = httpx.post(up, files={"file": ("uploaded.txt", b"via signed url")})
    assert r.status_code == 200, r.text
    assert secure_sandbox.files.read("uploaded.txt") == "via signed url"


def test_expired_signature(secure_sandbox):
    secure_sandbox.files.write("expired.txt", "x")
    url = secure_sandbox.download_url("expired.txt", use_signature_expiration=-120)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(url)
    assert e.value.code == 401
    assert json.loads(e.value.read().decode()) == {"code": 401, "message": "signature is already expired"}


def test_tampered_signature(secure_sandbox):
    url = secure_sandbox.download_url("expired.txt", use_signature_expiration=120)
    bad = url.replace("expired.txt", "other.txt")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(bad)
    assert json.loads(e.value.read().decode()) == {"code": 401, "message": "invalid signature"}


def test_feature_gates_at_0_6_13(secure_sandbox):
    info = secure_sandbox.files.write("gated.txt", "meta", metadata={"k": "v"})  # >= 0.6.2
    assert info.metadata == {"k": "v"}
    secure_sandbox.files.write("gated.gz", "gz" * 1000, gzip=True)  # >= 0.5.7
    assert secure_sandbox.files.read("gated.gz") == "gz" * 1000
    h = secure_sandbox.commands.run("cat", background=True, stdin=True)
    secure_sandbox.commands.send_stdin(h.pid, "abc")
    secure_sandbox.commands.close_stdin(h.pid)  # >= 0.5.2
    assert h.wait().stdout == "abc"
    handle = secure_sandbox.files.watch_dir(".", include_entry=True, recursive=True)  # >= 0.6.3, 0.1.4
    secure_sandbox.files.write("watched.txt", "w")
    events = handle.get_new_events()
    assert any(e.name == "watched.txt" and e.entry is not None and e.entry.type == FileType.FILE for e in events)
    handle.stop()


def test_init_reinit_rules(secure_runtime):
    daemon, cp = secure_runtime

    def init(body):
        return httpx.post(f"{daemon.url}/init", json=body)

    assert init({"accessToken": cp.token, "envVars": {"REINIT": "1"}}).status_code == 204
    r = init({"accessToken": "another-token"})
    assert r.status_code == 401
    assert r.json()["message"] == "access token validation failed"
    r = init({"envVars": {"X": "1"}})
    assert r.status_code == 401
    assert r.json()["message"] == "access token reset not authorized"
    assert init({"accessToken": cp.token, "defaultUser": "no-such-user-xyz"}).status_code == 400
    # An older timestamp than the last applied one is acknowledged without effect.
    assert init({"accessToken": cp.token, "timestamp": "2030-01-01T00:00:00Z", "envVars": {"TS": "new"}}).status_code == 204
    assert init({"accessToken": cp.token, "timestamp": "2029-01-01T00:00:00Z", "envVars": {"TS": "old"}}).status_code == 204
    envs = httpx.get(f"{daemon.url}/envs", headers={"X-Access-Token": cp.token}).json()
    assert envs["TS"] == "new"
    assert envs["REINIT"] == "1"
    assert envs["E2B_SANDBOX"] == "true"
    assert httpx.post(f"{daemon.url}/init", content=b"{not json").status_code == 400


def test_metrics_json_and_prometheus(secure_runtime):
    daemon, cp = secure_runtime
    h = {"X-Access-Token": cp.token}
    m = httpx.get(f"{daemon.url}/metrics", headers=h).json()
    for key in ["ts", "cpu_count", "cpu_used_pct", "mem_total", "mem_used", "mem_cache",
                "mem_total_mib", "mem_used_mib", "disk_used", "disk_total"]:
        assert key in m
    assert m["mem_total"] > 0 and m["disk_total"] > 0 and m["cpu_count"] >= 1
    text = httpx.get(f"{daemon.url}/metrics", headers={**h, "Accept": "text/plain"}).text
    assert "agent_runtime_requests_total" in text
    assert 'envd_version="0.6.13"' in text


def test_sigterm_stops_gracefully_and_kills_commands():
    port = free_port()
    d = Daemon(f"127.0.0.1:{port}", f"http://127.0.0.1:{port}", name="shutdown")
    try:
        # Start a long command over the raw protocol and check its process group dies with the daemon.
        body = json.dumps({"process": {"cmd": "/bin/sh", "args": ["-c", "sleep 60"]}, "stdin": False}).encode()
        env = b"\x00" + len(body).to_bytes(4, "big") + body
        with httpx.Client() as c:
            with c.stream("POST", f"{d.url}/process.Process/Start", content=env,
                          headers={"Content-Type": "application/connect+json"}) as r:
                first = next(r.iter_raw())
                pid = json.loads(first[5:])["event"]["start"]["pid"]
                d.proc.send_signal(signal.SIGTERM)
                code = d.proc.wait(timeout=20)
        assert code == 0
        assert "agent-runtime stopped" in d.log()
        deadline = time.time() + 5
        while time.time() < deadline:
            stat = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
            if stat in ("", "Z"):
                break
            time.sleep(0.05)
        assert stat in ("", "Z"), f"process {pid} survived the daemon: {stat}"
    finally:
        d.stop()
        d.cleanup()
