"""Pause/resume keeping memory (a running process) and files, paused retention, and snapshots:
create, list (filters, paging), create a sandbox from one (by id or name), delete (reference
e2b-protocol.md §3.1, upstream-manager.md §3.3, §4)."""

import pytest
from e2b import Sandbox, SandboxQuery, SandboxState, Template
from e2b.exceptions import SandboxException

from helpers import assert_error_body, connect_unary, gateway_request, unique, wait_until


def all_snapshots(paginator) -> list:
    out = []
    while paginator.has_next:
        out.extend(paginator.next_items())
    return out


@pytest.mark.local_only  # a local pause freezes the processes; a Kubernetes pause stops the pod
def test_pause_keeps_process_and_files(stack, kill_after):
    tag = unique("pause")
    sbx = Sandbox.create(metadata={"tag": tag}, timeout=300)
    kill_after.append(sbx)
    sid = sbx.sandbox_id
    token = sbx._envd_access_token
    handle = sbx.commands.run("sleep 600", background=True)
    pid = handle.pid
    handle.disconnect()
    sbx.files.write("kept/state.txt", "written before the pause")

    assert sbx.pause() is True
    assert sbx.pause() is False, "a second pause is a 409, which the SDK reports as False"
    status, body, _ = stack.request("POST", f"/sandboxes/{sid}/pause", {})
    assert status == 409, body
    assert_error_body(body, 409)
    assert sbx.get_info().state == SandboxState.PAUSED

    # The gateway does not reach a paused sandbox: 502, for /health and for envd calls alike.
    r = gateway_request(stack, sid, "/health")
    assert r.status == 502, r
    assert r.json().get("code") == 502, r
    r = connect_unary(stack, sid, "process.Process/List", {}, token=token)
    assert r.status == 502, r
    assert sbx.is_running() is False

    paused = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.PAUSED])).next_items()
    assert [s.sandbox_id for s in paused] == [sid]
    running = Sandbox.list(query=SandboxQuery(metadata={"tag": tag}, state=[SandboxState.RUNNING])).next_items()
    assert running == []

    resumed = Sandbox.connect(sid)
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.files.read("kept/state.txt") == "written before the pause"
    assert pid in [p.pid for p in resumed.commands.list()], "the background process survived the pause"
    assert resumed.commands.run(f"kill -0 {pid}").exit_code == 0
    assert resumed.commands.kill(pid) is True

    # Pause and resume again through the instance methods.
    assert resumed.pause() is True
    resumed.connect()
    assert resumed.commands.run("cat kept/state.txt").stdout == "written before the pause"


def test_snapshot_then_create_from_it(stack, kill_after):
    src = Sandbox.create(timeout=300)
    kill_after.append(src)
    src.files.write("snap/data.txt", "from the snapshot")

    snap = src.create_snapshot()
    assert snap.snapshot_id
    # The source sandbox keeps running (E2B: "The source sandbox keeps running either way").
    assert src.get_info().state == SandboxState.RUNNING
    assert src.commands.run("echo still-running").stdout == "still-running\n"
    src.files.write("snap/later.txt", "written after the snapshot")

    listed = all_snapshots(Sandbox.list_snapshots())
    assert snap.snapshot_id in [s.snapshot_id for s in listed]
    mine = all_snapshots(src.list_snapshots())
    assert [s.snapshot_id for s in mine] == [snap.snapshot_id]
    status, body, _ = stack.request("GET", f"/snapshots?sandboxID={src.sandbox_id}")
    assert status == 200, body
    assert [s["snapshotID"] for s in body] == [snap.snapshot_id]
    assert all(isinstance(s.get("names"), (list, type(None))) for s in body), body

    child = Sandbox.create(template=snap.snapshot_id)
    kill_after.append(child)
    assert child.sandbox_id != src.sandbox_id
    assert child.files.read("snap/data.txt") == "from the snapshot"
    assert not child.files.exists("snap/later.txt"), "the snapshot holds the files of its time"
    assert child.get_info().template_id == snap.snapshot_id
    # The child's files are its own.
    child.files.write("snap/data.txt", "changed in the child")
    assert src.files.read("snap/data.txt") == "from the snapshot"

    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    assert Sandbox.delete_snapshot(snap.snapshot_id) is False
    assert snap.snapshot_id not in [s.snapshot_id for s in all_snapshots(Sandbox.list_snapshots())]
    with pytest.raises(SandboxException) as e:
        Sandbox.create(template=snap.snapshot_id)
    assert getattr(e.value, "status_code", None) == 404, e.value
    status, body, _ = stack.request("POST", "/v2/sandboxes", {"templateID": snap.snapshot_id})
    assert status == 404, body
    assert_error_body(body, 404)
    # A sandbox created from it lives on.
    assert child.files.read("snap/data.txt") == "changed in the child"


def test_named_snapshot(stack, kill_after):
    src = Sandbox.create()
    kill_after.append(src)
    src.files.write("named.txt", "named snapshot")
    name = unique("snap")
    snap = src.create_snapshot(name=name)
    assert name in (snap.names or []), snap
    child = Sandbox.create(template=name)
    kill_after.append(child)
    assert child.files.read("named.txt") == "named snapshot"
    assert Sandbox.delete_snapshot(name) is True
    assert name not in [n for s in all_snapshots(Sandbox.list_snapshots()) for n in (s.names or [])]


@pytest.mark.local_only  # a paused Kubernetes sandbox has no pod to checkpoint (409; test_kube.py)
def test_snapshot_of_a_paused_sandbox_and_unknown_ids(stack, kill_after):
    src = Sandbox.create()
    kill_after.append(src)
    src.files.write("p.txt", "paused content")
    assert src.pause() is True
    snap = Sandbox.create_snapshot(src.sandbox_id)
    child = Sandbox.create(template=snap.snapshot_id)
    kill_after.append(child)
    assert child.files.read("p.txt") == "paused content"
    assert Sandbox.get_info(src.sandbox_id).state == SandboxState.PAUSED
    assert Sandbox.delete_snapshot(snap.snapshot_id) is True

    status, body, _ = stack.request("POST", "/sandboxes/doesnotexist0000/snapshots", {})
    assert status == 404, body
    assert_error_body(body, 404)
    status, body, _ = stack.request("DELETE", "/templates/doesnotexist0000")
    assert status == 404, body
    assert_error_body(body, 404)


def test_snapshot_names_filter_and_paging(stack, kill_after):
    """Snapshot names may be namespaced and tagged (`proj/snap:v1`, sent as one path segment
    `proj%2Fsnap%3Av1` on delete and Template.exists); list_snapshots(name=...) filters by name
    or id; list_snapshots pages newest first with X-Next-Token only while more remain
    (reference e2b-protocol.md §3.1, §8.9)."""
    src = Sandbox.create()
    kill_after.append(src)
    src.files.write("n.txt", "namespaced")
    name = f"proj-{unique('n')}/snap:v1"
    named = src.create_snapshot(name=name)
    plain = [src.create_snapshot() for _ in range(2)]
    everything = [named.snapshot_id] + [p.snapshot_id for p in plain]
    try:
        assert Template.exists(name) is True
        child = Sandbox.create(template=name)
        kill_after.append(child)
        assert child.files.read("n.txt") == "namespaced"

        by_name = all_snapshots(Sandbox.list_snapshots(name=name))
        assert [s.snapshot_id for s in by_name] == [named.snapshot_id], by_name
        by_id = all_snapshots(Sandbox.list_snapshots(name=plain[0].snapshot_id))
        assert [s.snapshot_id for s in by_id] == [plain[0].snapshot_id], by_id

        p = Sandbox.list_snapshots(sandbox_id=src.sandbox_id, limit=1)
        pages = []
        while p.has_next:
            page = p.next_items()
            assert len(page) <= 1
            pages.extend(s.snapshot_id for s in page)
            assert len(pages) <= 3, pages
        assert pages == list(reversed(everything)), "newest first"
        assert p.has_next is False

        assert Sandbox.delete_snapshot(name) is True
        assert Template.exists(name) is False
    finally:
        for sid in everything:
            Sandbox.delete_snapshot(sid)


def test_paused_retention_extension(stack, kill_after):
    """`e2b.agents.kruise.io/reserve-paused-sandbox-duration`: a paused sandbox is deleted when
    its retention ends (upstream-manager.md §3.3)."""
    sbx = Sandbox.create(metadata={"e2b.agents.kruise.io/reserve-paused-sandbox-duration": "2s"})
    kill_after.append(sbx)
    assert sbx.pause() is True

    def gone():
        status, _, _ = stack.request("GET", f"/sandboxes/{sbx.sandbox_id}")
        return status == 404

    wait_until(gone, timeout=30, what="the paused sandbox to reach its retention")
    assert sbx.is_running() is False
