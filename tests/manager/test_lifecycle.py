"""Sandbox lifecycle through the real SDK (e2b 2.63.0): create, get_info, commands, kill (also
during a running command and when paused); timeout expiry (set_timeout) and what the gateway
answers afterwards; connect semantics on running and paused sandboxes; lifecycle on_timeout=pause
and auto_resume; metrics and templates (reference e2b-protocol.md §3.1, §3.3, §3.8, §6.5, §7.3)."""

import threading
from datetime import datetime, timedelta, timezone

import pytest
from e2b import Sandbox, SandboxNotFoundException, SandboxNotRunningException, SandboxQuery, SandboxState, Template
from e2b.exceptions import SandboxException

from conftest import KIND
from helpers import assert_error_body, assert_sandbox_gone_502, gateway_request, unique, wait_until

# A local pause freezes the sandbox's processes and keeps its files; a Kubernetes pause stops
# the pod (upstream's default pause strategy), so a resumed sandbox starts afresh.
PAUSE_KEEPS_STATE = KIND == "local"


def now() -> datetime:
    return datetime.now(timezone.utc)


def close_to(a: datetime, b: datetime, seconds: float) -> bool:
    return abs((a - b).total_seconds()) <= seconds


def gone(sandbox_id: str) -> bool:
    """True once the API answers 404 for the sandbox (SandboxNotFoundException)."""
    try:
        Sandbox.get_info(sandbox_id)
    except SandboxNotFoundException:
        return True
    return False


def test_create_info_commands_kill(stack, kill_after):
    tag = unique()
    before = now()
    sbx = Sandbox.create(metadata={"suite": "manager-e2e", "tag": tag})
    after = now()
    kill_after.append(sbx)
    assert sbx.sandbox_id and "-" not in sbx.sandbox_id

    info = sbx.get_info()
    assert info.sandbox_id == sbx.sandbox_id
    assert info.template_id == "base"
    assert info.state == SandboxState.RUNNING
    assert info.metadata == {"suite": "manager-e2e", "tag": tag}
    assert info.envd_version == "0.6.13"
    assert info.cpu_count >= 1 and info.memory_mb >= 1
    assert before - timedelta(seconds=2) <= info.started_at <= after + timedelta(seconds=2), info
    # No timeout given: the SDK omits it and the server's default is 300 s (§3.8).
    assert close_to(info.end_at, info.started_at + timedelta(seconds=300), 2), info
    # The class-method form answers the same.
    assert Sandbox.get_info(sbx.sandbox_id).end_at == info.end_at

    r = sbx.commands.run("echo hello; echo oops >&2")
    assert (r.exit_code, r.stdout, r.stderr) == (0, "hello\n", "oops\n")
    assert sbx.is_running() is True

    assert sbx.kill() is True
    # The 204 comes after the gateways dropped the route: the data plane is gone at once.
    assert sbx.is_running() is False
    assert_sandbox_gone_502(gateway_request(stack, sbx.sandbox_id, "/health"), sbx.sandbox_id)
    assert sbx.kill() is False
    assert Sandbox.kill(sbx.sandbox_id) is False
    with pytest.raises(SandboxNotFoundException):
        sbx.get_info()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sbx.sandbox_id)
    status, body, _ = stack.request("GET", f"/sandboxes/{sbx.sandbox_id}")
    assert status == 404
    assert_error_body(body, 404)
    # A command on a killed sandbox is reported as such by the SDK (the gateway's 502 "was not
    # found", §6.5).
    with pytest.raises(SandboxException) as e:
        sbx.commands.run("true")
    assert "was not found" in str(e.value) or "killed" in str(e.value), e.value
    listed = Sandbox.list(query=SandboxQuery(metadata={"tag": tag})).next_items()
    assert listed == []


def test_create_with_timeout_and_envs(stack, kill_after):
    sbx = Sandbox.create(timeout=90, envs={"GREETING": "hi there"})
    kill_after.append(sbx)
    info = sbx.get_info()
    assert close_to(info.end_at, info.started_at + timedelta(seconds=90), 2), info
    assert sbx.commands.run("echo $GREETING").stdout == "hi there\n"


def test_set_timeout_expires_the_sandbox(stack, kill_after):
    sbx = Sandbox.create(timeout=300)
    kill_after.append(sbx)
    sid = sbx.sandbox_id
    sbx.set_timeout(2)
    expected_end = now() + timedelta(seconds=2)
    # set_timeout can shorten: the stored end is now + 2 s (unless it already expired).
    try:
        assert close_to(sbx.get_info().end_at, expected_end, 2)
    except SandboxNotFoundException:
        pass
    wait_until(lambda: gone(sid), timeout=30, what=f"sandbox {sid} to expire after set_timeout(2)")
    assert_sandbox_gone_502(gateway_request(stack, sid, "/health"), sid)
    assert sbx.is_running() is False
    assert sbx.kill() is False
    assert sid not in [s.sandbox_id for s in Sandbox.list().next_items()]


def test_set_timeout_zero_expires_now(stack, kill_after):
    sbx = Sandbox.create(timeout=300)
    kill_after.append(sbx)
    sid = sbx.sandbox_id
    sbx.set_timeout(0)
    wait_until(lambda: gone(sid), timeout=15, what=f"sandbox {sid} to expire after set_timeout(0)")
    assert_sandbox_gone_502(gateway_request(stack, sid, "/health"), sid)
    assert sbx.is_running() is False


def test_set_timeout_extends(stack, kill_after):
    sbx = Sandbox.create(timeout=60)
    kill_after.append(sbx)
    sbx.set_timeout(1800)
    assert close_to(sbx.get_info().end_at, now() + timedelta(seconds=1800), 3)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout("doesnotexist0000", 60)


def test_connect_never_shortens_a_running_sandbox(stack, kill_after):
    sbx = Sandbox.create(timeout=600)
    kill_after.append(sbx)
    end0 = sbx.get_info().end_at

    # connect with a shorter timeout: endAt is stored, not recomputed, and unchanged (equal).
    other = Sandbox.connect(sbx.sandbox_id, timeout=10)
    assert other.sandbox_id == sbx.sandbox_id
    assert other.get_info().end_at == end0
    sbx.connect(timeout=10)
    assert sbx.get_info().end_at == end0
    assert other.commands.run("echo via-connect").stdout == "via-connect\n"

    # connect with a longer timeout extends it to now + timeout.
    Sandbox.connect(sbx.sandbox_id, timeout=1200)
    end1 = sbx.get_info().end_at
    assert end1 > end0
    assert close_to(end1, now() + timedelta(seconds=1200), 3), end1


def test_connect_resumes_a_paused_sandbox(stack, kill_after):
    sbx = Sandbox.create(timeout=300)
    kill_after.append(sbx)
    sid = sbx.sandbox_id
    assert sbx.pause() is True
    assert sbx.get_info().state == SandboxState.PAUSED

    # Raw API: 201 when it was paused (resumed), 200 when it was running.
    status, body, _ = stack.request("POST", f"/v2/sandboxes/{sid}/connect", {"timeout": 120})
    assert status == 201, body
    assert body["sandboxID"] == sid
    for k in ("templateID", "clientID", "envdVersion", "envdAccessToken"):
        assert body.get(k), (k, body)
    info = sbx.get_info()
    assert info.state == SandboxState.RUNNING
    assert close_to(info.end_at, now() + timedelta(seconds=120), 3), info
    status, body, _ = stack.request("POST", f"/v2/sandboxes/{sid}/connect", {"timeout": 60})
    assert status == 200, body
    assert body["sandboxID"] == sid
    # The v1 path (SDK <= 2.50) answers the same.
    status, body, _ = stack.request("POST", f"/sandboxes/{sid}/connect", {"timeout": 60})
    assert status == 200, body

    # Through the SDK: connect on a paused sandbox resumes it and the data plane works at once.
    assert sbx.pause() is True
    assert sbx.is_running() is False
    resumed = Sandbox.connect(sid, timeout=60)
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.commands.run("echo back").stdout == "back\n"
    assert sbx.is_running() is True


def test_connect_to_unknown_or_killed_sandbox(stack, kill_after):
    sbx = Sandbox.create()
    kill_after.append(sbx)
    assert sbx.kill() is True
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sbx.sandbox_id)
    for path in (f"/v2/sandboxes/{sbx.sandbox_id}/connect", "/v2/sandboxes/doesnotexist0000/connect"):
        status, body, _ = stack.request("POST", path, {"timeout": 60})
        assert status == 404, (path, body)
        assert_error_body(body, 404)


def test_kill_during_a_running_command(stack, kill_after):
    """Killing a sandbox aborts the open command stream: the SDK reports the sandbox gone
    (SandboxNotRunningException, "killed or reached its end of life"), not a clean end."""
    sbx = Sandbox.create()
    kill_after.append(sbx)
    started = threading.Event()
    outcome = {}

    def run():
        try:
            sbx.commands.run("echo started; sleep 60", on_stdout=lambda _: started.set(), timeout=90)
            outcome["result"] = "finished"
        except Exception as e:  # noqa: BLE001 - inspected below
            outcome["result"] = e

    t = threading.Thread(target=run)
    t.start()
    assert started.wait(30), "the command did not start"
    assert sbx.kill() is True
    t.join(30)
    assert not t.is_alive(), "the command stream was not ended by the kill"
    err = outcome["result"]
    assert isinstance(err, SandboxNotRunningException), repr(err)
    assert "killed or reached its end of life" in str(err) or "was not found" in str(err), err


def test_kill_a_paused_sandbox(stack, kill_after):
    sbx = Sandbox.create()
    kill_after.append(sbx)
    assert sbx.pause() is True
    assert sbx.kill() is True
    assert gone(sbx.sandbox_id)
    assert_sandbox_gone_502(gateway_request(stack, sbx.sandbox_id, "/health"), sbx.sandbox_id)


def test_auto_pause_on_timeout(stack, kill_after):
    """lifecycle on_timeout=pause: at its timeout the sandbox is paused (not killed), keeping
    its files and processes; connect resumes it."""
    sbx = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause"})
    kill_after.append(sbx)
    info = sbx.get_info()
    assert info.lifecycle == {"on_timeout": "pause", "auto_resume": False}, info.lifecycle
    h = sbx.commands.run("sleep 600", background=True)
    h.disconnect()
    sbx.files.write("auto.txt", "before the auto-pause")
    wait_until(lambda: sbx.get_info().state == SandboxState.PAUSED, timeout=30, what="the auto-pause")
    assert sbx.is_running() is False
    resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
    assert resumed.commands.run("echo back").stdout == "back\n"
    if PAUSE_KEEPS_STATE:
        assert resumed.files.read("auto.txt") == "before the auto-pause"
        assert resumed.commands.run(f"kill -0 {h.pid}").exit_code == 0


def test_auto_resume_is_reported_honestly(stack, kill_after):
    """The local backend does not wake sandboxes on traffic (upstream ignores autoResume too):
    the request is accepted, the sandbox reports auto_resume False, traffic to it while it is
    paused gets the gateway's 502, and connect resumes it with its files."""
    sbx = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause", "auto_resume": True})
    kill_after.append(sbx)
    assert sbx.get_info().lifecycle == {"on_timeout": "pause", "auto_resume": False}
    sbx.files.write("wake.txt", "kept while paused")
    wait_until(lambda: sbx.get_info().state == SandboxState.PAUSED, timeout=30, what="the auto-pause")
    assert not sbx.is_running()
    assert sbx.get_info().state == SandboxState.PAUSED, "traffic does not resume it"
    resumed = Sandbox.connect(sbx.sandbox_id)
    if PAUSE_KEEPS_STATE:
        assert resumed.files.read("wake.txt") == "kept while paused"
    assert resumed.get_info().state == SandboxState.RUNNING


def test_metrics(stack, kill_after):
    sbx = Sandbox.create()
    kill_after.append(sbx)
    samples = wait_until(lambda: sbx.get_metrics(), timeout=30, what="a metrics sample")
    m = samples[-1]
    assert m.cpu_count >= 1 and m.mem_total > 0 and m.disk_total > 0, m
    assert 0 <= m.cpu_used_pct <= 100 * m.cpu_count, m
    assert close_to(m.timestamp, now(), 60), m
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_metrics("doesnotexist0000")


def test_templates(stack):
    assert Template.exists("base") is True
    assert Template.exists("no-such-template") is False
    status, body, _ = stack.request("GET", "/templates")
    assert status == 200, body
    base = [t for t in body if t["templateID"] == "base"]
    assert base and base[0]["buildStatus"] == "ready", body
    status, body, _ = stack.request("GET", "/templates/base")
    assert status == 200 and body["templateID"] == "base", body
    status, body, _ = stack.request("DELETE", "/templates/base")
    assert 400 <= status < 500, (status, body)
    assert_error_body(body, status)
