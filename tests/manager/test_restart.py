"""A restart of the stack (manager and gateway, same ports and data directory) loses nothing: API
keys, snapshots and sandboxes survive. A sandbox that was running comes back paused (its
processes ended with the previous run, its files are kept: documented behaviour of the local
backend), a paused one stays paused; connect resumes both. After each stop no process of the
stack is left (Stack.stop asserts it)."""

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState

from conftest import Stack
import time

from helpers import assert_sandbox_gone_502, connect_unary, gateway_request, unique


def listed(stack, key, tag, state=None):
    q = SandboxQuery(metadata={"tag": tag}, state=state)
    p = Sandbox.list(query=q, **dict(stack.sdk_opts(), api_key=key))
    out = []
    while p.has_next:
        out.extend(p.next_items())
    return out


@pytest.mark.local_only  # restarts a private local stack
def test_restart_keeps_keys_sandboxes_and_snapshots(tmp_path):
    s = Stack.start(tmp_path / "restart", pool_size=1)
    try:
        opts = s.sdk_opts()
        tag = unique("restart")
        status, created, _ = s.request("POST", "/api-keys", {"name": "survivor", "teamName": "team-r"})
        assert status == 201, created
        key = created["key"]
        kopts = dict(opts, api_key=key)

        running = Sandbox.create(metadata={"tag": tag, "was": "running"}, timeout=600, envs={"KEPT_ENV": "yes"}, **kopts)
        old_token = running._envd_access_token
        running.files.write("keep/running.txt", "running before the restart")
        paused = Sandbox.create(metadata={"tag": tag, "was": "paused"}, timeout=600, **kopts)
        paused.files.write("keep/paused.txt", "paused before the restart")
        assert paused.pause() is True
        snap = running.create_snapshot()
        old_running_id, old_paused_id = running.sandbox_id, paused.sandbox_id

        s.stop()  # asserts that no process of the stack (sandboxes included) is left
        s.launch()

        # The key still authenticates (and only sees its team's sandboxes).
        status, body, _ = s.request("GET", "/v2/sandboxes", key=key)
        assert status == 200, body
        # The snapshot is still listed and usable.
        status, snaps, _ = s.request("GET", "/snapshots", key=key)
        assert status == 200, snaps
        assert snap.snapshot_id in [x["snapshotID"] for x in snaps], snaps

        # Both sandboxes are listed, both paused.
        every = listed(s, key, tag)
        assert sorted(x.sandbox_id for x in every) == sorted([old_running_id, old_paused_id])
        assert all(x.state == SandboxState.PAUSED for x in every), every
        assert sorted(x.sandbox_id for x in listed(s, key, tag, [SandboxState.PAUSED])) == sorted(
            [old_running_id, old_paused_id]
        )
        assert listed(s, key, tag, [SandboxState.RUNNING]) == []
        assert Sandbox.get_info(old_running_id, **kopts).metadata == {"tag": tag, "was": "running"}
        # Paused means unreachable through the gateway until resumed.
        r = gateway_request(s, old_running_id, "/health")
        assert r.status == 502, r

        # connect resumes them, with their files.
        r1 = Sandbox.connect(old_running_id, timeout=120, **kopts)
        assert r1.files.read("keep/running.txt") == "running before the restart"
        assert r1.commands.run("echo alive").stdout == "alive\n"
        # The sandbox's env vars and its envd token are those of before the restart.
        assert r1.commands.run("echo $KEPT_ENV").stdout == "yes\n"
        assert r1._envd_access_token == old_token
        assert connect_unary(s, old_running_id, "process.Process/List", {}, token=old_token).status == 200
        assert connect_unary(s, old_running_id, "process.Process/List", {}).status in (401, 403)
        r2 = Sandbox.connect(old_paused_id, timeout=120, **kopts)
        assert r2.files.read("keep/paused.txt") == "paused before the restart"
        assert r2.commands.run("cat keep/paused.txt").stdout == "paused before the restart"
        assert Sandbox.get_info(old_paused_id, **kopts).state == SandboxState.RUNNING

        child = Sandbox.create(template=snap.snapshot_id, metadata={"tag": tag, "was": "child"}, **kopts)
        assert child.files.read("keep/running.txt") == "running before the restart"

        # A second restart right away: the resumed sandboxes come back paused again.
        s.stop()
        s.launch()
        assert sorted(x.sandbox_id for x in listed(s, key, tag, [SandboxState.PAUSED])) == sorted(
            [old_running_id, old_paused_id, child.sandbox_id]
        )
        again = Sandbox.connect(child.sandbox_id, **kopts)
        assert again.files.read("keep/running.txt") == "running before the restart"
        for sid in (old_running_id, old_paused_id, child.sandbox_id):
            assert Sandbox.kill(sid, **kopts) is True
            assert_sandbox_gone_502(gateway_request(s, sid, "/health"), sid)
        assert Sandbox.delete_snapshot(snap.snapshot_id, **kopts) is True
    finally:
        s.stop()


@pytest.mark.local_only  # restarts a private local stack
def test_timeouts_that_pass_while_the_stack_is_down(tmp_path):
    """A sandbox whose timeout passes while the manager is down is gone after the restart when
    it was to be killed, and paused when it was to be paused (lifecycle on_timeout=pause)."""
    s = Stack.start(tmp_path / "downtime", pool_size=1)
    try:
        opts = s.sdk_opts()
        tag = unique("down")
        killed = Sandbox.create(metadata={"tag": tag}, timeout=6, **opts)
        killed.files.write("k.txt", "x")
        paused = Sandbox.create(metadata={"tag": tag}, timeout=6, lifecycle={"on_timeout": "pause"}, **opts)
        paused.files.write("p.txt", "kept through the auto-pause")
        end = max(killed.get_info().end_at, paused.get_info().end_at).timestamp()
        s.stop()
        # Stay down until both timeouts have passed (a deadline, not a guess).
        while time.time() < end + 0.5:
            time.sleep(0.1)
        s.launch()

        status, body, _ = s.request("GET", f"/sandboxes/{killed.sandbox_id}")
        assert status == 404, body
        assert_sandbox_gone_502(gateway_request(s, killed.sandbox_id, "/health"), killed.sandbox_id)
        assert Sandbox.get_info(paused.sandbox_id, **opts).state == SandboxState.PAUSED
        assert [x.sandbox_id for x in listed(s, s.api_key, tag)] == [paused.sandbox_id]
        back = Sandbox.connect(paused.sandbox_id, timeout=60, **opts)
        assert back.files.read("p.txt") == "kept through the auto-pause"
        assert back.kill() is True
    finally:
        s.stop()
