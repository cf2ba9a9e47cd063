"""What only the Kubernetes stack has (MANAGER_STACK=kube; skipped on the local one): two
sandbox-manager replicas sharing nothing but the apiserver never hand one sandbox out twice,
also when the pool runs dry and sandboxes are created on no stock; the claim timeout without
stock; and a replica killed during a burst leaves no sandbox taken forever (every take carries
the sandbox's shutdownTime, so what the dead replica took expires) while the other replica keeps
serving and the killed one, restarted, serves again — also for a never-timeout sandbox, whose
take carries a provisional deadline that the create removes only when it answers.
"""

import json
import os
import signal
import subprocess
import threading
import time
import urllib.parse
from collections import Counter

import pytest
from e2b import Sandbox

from conftest import KIND, processes_mentioning
from helpers import wait_until

pytestmark = pytest.mark.skipif(KIND != "kube", reason="needs the Kubernetes stack (make test-manager-kube)")

EXT = "e2b.agents.kruise.io/"


def kubectl(*args: str, stdin: str | None = None) -> str:
    return subprocess.run([os.environ["KUBECTL_BIN"], *args], input=stdin, capture_output=True,
                          text=True, check=True, timeout=60).stdout


def sandbox_crs() -> list[dict]:
    return json.loads(kubectl("get", "sandboxes.agents.kruise.io", "-n", "default", "-o", "json"))["items"]


def claimed_crs() -> list[dict]:
    return [s for s in sandbox_crs() if s["metadata"].get("labels", {}).get("agents.kruise.io/sandbox-claimed") == "true"]


def create_on(stack, replica: int, results: list, timeout: int = 120, metadata: dict | None = None):
    """POST /v2/sandboxes to one replica; appends (status, body)."""
    import urllib.error
    import urllib.request
    body = json.dumps({"templateID": "base", "timeout": timeout, "metadata": metadata or {}}).encode()
    req = urllib.request.Request(stack.replica_url(replica) + "/v2/sandboxes", data=body, method="POST",
                                 headers={"content-type": "application/json", "x-api-key": stack.api_key})
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            results.append((r.status, json.loads(r.read())))
    except urllib.error.HTTPError as e:
        results.append((e.code, e.read().decode()))
    except OSError as e:
        results.append((0, str(e)))


def burst(stack, per_replica: dict[int, int], **kw) -> list:
    results: list = []
    threads = [threading.Thread(target=create_on, args=(stack, r, results), kwargs=kw)
               for r, n in per_replica.items() for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def pool_available() -> int:
    status = json.loads(kubectl("get", "sandboxset", "base", "-n", "default", "-o", "json")).get("status", {})
    return status.get("availableReplicas", 0)


def pods() -> list[dict]:
    return json.loads(kubectl("get", "pods", "-n", "default", "-o", "json"))["items"]


@pytest.fixture
def pool_of_50():
    """SandboxSet base scaled to 50 warm sandboxes for one test, back to its size after — and
    the cluster settled (every pod of the test gone), so the next tests do not run beside the
    deletion of some 250 pods."""
    before = json.loads(kubectl("get", "sandboxset", "base", "-n", "default", "-o", "json"))["spec"]["replicas"]
    pods_before = len(pods())
    kubectl("patch", "sandboxset", "base", "-n", "default", "--type=merge", "-p", '{"spec":{"replicas":50}}')
    wait_until(lambda: pool_available() >= 50, timeout=240, interval=0.5, what="a warm pool of 50")
    yield
    kubectl("patch", "sandboxset", "base", "-n", "default", "--type=merge", "-p",
            json.dumps({"spec": {"replicas": before}}))
    wait_until(lambda: len(pods()) <= pods_before and pool_available() >= before, timeout=300, interval=0.5,
               what="the pods of the burst deleted and the pool back to its size")


def test_two_replicas_never_hand_out_one_sandbox_twice(stack, pool_of_50, kill_after):
    # 200 creates, half on each replica, against a warm pool of 50: 150 are created on no stock.
    results = burst(stack, {0: 100, 1: 100})
    ids = [b["sandboxID"] for s, b in results if s == 201]
    kill_after.extend(ids)
    assert [s for s, _ in results] == [201] * 200, [r for r in results if r[0] != 201][:3]
    assert len(set(ids)) == 200
    # Each id names exactly one claimed Sandbox CR, and no CR carries two ids.
    by_id = Counter(s["metadata"]["labels"].get("agents.kruise.io/sandbox-id") for s in claimed_crs())
    assert all(by_id[i] == 1 for i in ids), {i: by_id[i] for i in ids if by_id[i] != 1}
    # The first data-plane call on every sandbox works (its route was acknowledged before 201).
    failures = []

    def first_call(sid):
        try:
            out = Sandbox.connect(sid).commands.run("echo $((6*7))").stdout
            if out != "42\n":
                failures.append((sid, out))
        except Exception as e:  # noqa: BLE001 - collected and reported below
            failures.append((sid, repr(e)))

    threads = [threading.Thread(target=first_call, args=(sid,)) for sid in ids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    # Both replicas see every sandbox (each from its own watch).
    for replica in (0, 1):
        listed, token = [], ""
        while True:
            query = "?limit=100" + (f"&nextToken={urllib.parse.quote(token)}" if token else "")
            status, page, headers = stack.request("GET", "/v2/sandboxes" + query, base=stack.replica_url(replica))
            assert status == 200, page
            listed += [s["sandboxID"] for s in page]
            token = headers.get("x-next-token")
            if not token:
                break
        assert set(ids) <= set(listed), replica


def test_claim_timeout_without_stock(stack):
    kubectl("apply", "-f", "-", stdin="""
apiVersion: agents.kruise.io/v1alpha1
kind: SandboxSet
metadata: {name: empty, namespace: default}
spec:
  replicas: 0
  template:
    spec:
      containers: [{name: main, image: agent-runtime}]
""")
    wait_until(lambda: stack.request("GET", "/templates")[1] and any(t["templateID"] == "empty" for t in stack.request("GET", "/templates")[1]),
               timeout=30, what="template `empty` listed")
    started = time.monotonic()
    status, body, _ = stack.request("POST", "/v2/sandboxes", {
        "templateID": "empty", "timeout": 60,
        "metadata": {EXT + "create-on-no-stock": "false", EXT + "claim-timeout-seconds": "2"}})
    took = time.monotonic() - started
    assert status == 503, body
    assert body["code"] == 503 and "no available sandbox" in body["message"], body
    assert took < 30, took
    assert not [s for s in sandbox_crs() if s["metadata"].get("labels", {}).get("agents.kruise.io/sandbox-pool") == "empty"]


def manager_pid(stack, replica: int) -> int:
    marker = str(stack.run_dir / f"manager-{replica}")
    procs = [p for p in processes_mentioning(marker) if "sandbox-manager" in p and "supervise" not in p]
    assert len(procs) == 1, procs
    return int(procs[0].split(":", 1)[0])


def test_a_replica_killed_during_a_burst(stack, kill_after):
    victim = manager_pid(stack, 1)
    results: list = []
    threads = [threading.Thread(target=create_on, args=(stack, 1, results), kwargs={"timeout": 90}) for _ in range(12)]
    threads += [threading.Thread(target=create_on, args=(stack, 0, results), kwargs={"timeout": 90}) for _ in range(6)]
    for t in threads:
        t.start()
    # Kill it while its claims are under way (some answered, some not).
    wait_until(lambda: len(results) >= 2, timeout=60, interval=0.01, what="the first answers of the burst")
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join()
    ok = [b["sandboxID"] for s, b in results if s == 201]
    kill_after.extend(ok)
    assert len(set(ok)) == len(ok)
    assert len(ok) >= 6, results  # replica 0's six at least
    # What the dead replica had taken but not answered is claimed with a shutdownTime: it expires
    # instead of staying taken forever.
    for cr in claimed_crs():
        if cr["metadata"].get("deletionTimestamp"):
            continue
        assert cr["spec"].get("shutdownTime"), cr["metadata"]["name"]
    # The killed replica is back (its supervisor restarts it, as a Deployment would) and serves.
    wait_until(lambda: manager_pid_or_none(stack, 1) not in (None, victim), timeout=30, what="replica 1 restarted")
    wait_until(lambda: ready(stack, 1), timeout=60, what="replica 1 ready again")
    again: list = []
    create_on(stack, 1, again)
    assert again[0][0] == 201, again
    kill_after.append(again[0][1]["sandboxID"])


def sandbox_id_of(cr: dict) -> str | None:
    return cr["metadata"].get("labels", {}).get("agents.kruise.io/sandbox-id")


def test_a_never_timeout_sandbox_taken_by_a_dead_replica_expires(stack, kill_after):
    never = {EXT + "never-timeout": "true"}
    # Answered: the provisional deadline is gone, the sandbox never times out.
    done: list = []
    create_on(stack, 0, done, metadata=never)
    assert done[0][0] == 201, done
    kill_after.append(done[0][1]["sandboxID"])
    [cr] = [c for c in claimed_crs() if sandbox_id_of(c) == done[0][1]["sandboxID"]]
    assert not cr["spec"].get("shutdownTime"), cr["spec"]
    # Not answered: the gateway is held (SIGSTOP), so the create waits for its route after the
    # take; the replica dies there.
    [envoy] = [int(p.split(":", 1)[0]) for p in processes_mentioning(str(stack.run_dir / "envoy.yaml"))]
    victim = manager_pid(stack, 1)
    before = {sandbox_id_of(c) for c in claimed_crs()}
    results: list = []
    creating = threading.Thread(target=create_on, args=(stack, 1, results), kwargs={"metadata": never})
    started = time.time()
    os.kill(envoy, signal.SIGSTOP)
    try:
        creating.start()
        [taken] = wait_until(lambda: [c for c in claimed_crs() if sandbox_id_of(c) not in before],
                             timeout=60, interval=0.02, what="the take of the never-timeout create")
        os.kill(victim, signal.SIGKILL)
        creating.join()
    finally:
        os.kill(envoy, signal.SIGCONT)
    kill_after.append(sandbox_id_of(taken))
    assert results and results[0][0] != 201, results
    # The controller deletes it at the provisional deadline: within the claim bound (60 s), a
    # created sandbox's start (30 s), the route wait (5 s) and a minute, from the take.
    import datetime
    deadline = datetime.datetime.fromisoformat(taken["spec"]["shutdownTime"].replace("Z", "+00:00")).timestamp()
    assert started < deadline <= time.time() + 60 + 30 + 5 + 60 + 5, taken["spec"]
    wait_until(lambda: manager_pid_or_none(stack, 1) not in (None, victim), timeout=30, what="replica 1 restarted")
    wait_until(lambda: ready(stack, 1), timeout=60, what="replica 1 ready again")


def manager_pid_or_none(stack, replica):
    try:
        return manager_pid(stack, replica)
    except AssertionError:
        return None


def ready(stack, replica) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(stack.replica_url(replica) + "/readyz", timeout=2) as r:
            return r.read() == b"ready"
    except OSError:
        return False


def test_keys_live_in_a_secret_shared_by_the_replicas(stack):
    """A key created through one replica authenticates on the other (its watch of Secret
    e2b-key-store), one deleted through the other stops working on the first, and the Secret
    holds digests, never a key."""
    status, created, _ = stack.request("POST", "/api-keys", {"name": "shared"}, base=stack.replica_url(0))
    assert status == 201, created
    raw, key_id = created["key"], created["id"]
    wait_until(lambda: stack.request("GET", "/v2/sandboxes", key=raw, base=stack.replica_url(1))[0] == 200,
               timeout=30, what="replica 1 to accept a key created through replica 0")
    secret = json.loads(kubectl("get", "secret", "e2b-key-store", "-n", "sandbox-system", "-o", "json"))
    import base64
    doc = base64.b64decode(secret["data"]["keys.json"]).decode()
    assert key_id in doc and raw not in doc and raw[4:] not in doc
    status, body, _ = stack.request("DELETE", f"/api-keys/{key_id}", base=stack.replica_url(1))
    assert status in (200, 204), body
    wait_until(lambda: stack.request("GET", "/v2/sandboxes", key=raw, base=stack.replica_url(0))[0] == 401,
               timeout=30, what="replica 0 to refuse the deleted key")


def test_cpu_keys_resize_the_claimed_sandbox_in_place(stack, kill_after):
    """cpu-request / cpu-limit: the take writes them into container 0 of the sandbox's template
    (only values the template already sets; memory untouched), the controller resizes the pod in
    place, and the sandbox keeps working. Bad quantities are a 400 naming the key."""
    done: list = []
    create_on(stack, 0, done, metadata={EXT + "cpu-request": "250m", EXT + "cpu-limit": "1500m"})
    assert done[0][0] == 201, done
    sid = done[0][1]["sandboxID"]
    kill_after.append(sid)
    [cr] = [c for c in claimed_crs() if sandbox_id_of(c) == sid]
    res = cr["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert res["requests"] == {"cpu": "250m", "memory": "512Mi"}, res
    assert res["limits"] == {"cpu": "1500m", "memory": "512Mi"}, res
    pod = cr["metadata"]["name"]

    def resized():
        p = json.loads(kubectl("get", "pod", pod, "-n", "default", "-o", "json"))
        r = p["spec"]["containers"][0]["resources"]
        return r["requests"]["cpu"] == "250m" and r["limits"]["cpu"] == "1500m"

    wait_until(resized, timeout=60, interval=0.2, what="the pod resized in place")
    assert Sandbox.connect(sid).commands.run("echo still here").stdout == "still here\n"
    for key, bad in (("cpu-request", "0"), ("cpu-limit", "-1"), ("cpu-request", "lots")):
        out: list = []
        create_on(stack, 0, out, metadata={EXT + key: bad})
        assert out[0][0] == 400 and key in str(out[0][1]), out


def test_image_key_updates_the_claimed_sandbox_in_place_and_waits(stack, kill_after):
    """image: the take writes the image into container 0; the controller updates the pod in
    place (its process restarts with the new image) and reports InplaceUpdate=True only once the
    pod runs it and is ready; the create waits for that, then initialises the new runtime, so
    the first command works. A malformed reference is a 400 naming the key."""
    done: list = []
    create_on(stack, 1, done, metadata={EXT + "image": "agent-runtime:v2"})
    assert done[0][0] == 201, done
    sid = done[0][1]["sandboxID"]
    kill_after.append(sid)
    [cr] = [c for c in claimed_crs() if sandbox_id_of(c) == sid]
    assert cr["spec"]["template"]["spec"]["containers"][0]["image"] == "agent-runtime:v2"
    update = [c for c in cr["status"]["conditions"] if c["type"] == "InplaceUpdate"]
    assert update and update[0]["status"] == "True", cr["status"]["conditions"]
    pod = json.loads(kubectl("get", "pod", cr["metadata"]["name"], "-n", "default", "-o", "json"))
    status = pod["status"]["containerStatuses"][0]
    assert status["image"] == "agent-runtime:v2" and status["ready"] and status["restartCount"] >= 1, status
    assert Sandbox.connect(sid).commands.run("echo new image").stdout == "new image\n"
    out: list = []
    create_on(stack, 0, out, metadata={EXT + "image": "Not An Image"})
    assert out[0][0] == 400 and "image" in str(out[0][1]), out


def test_snapshots_are_checkpoints_and_clones_restore_from_them(stack, kill_after):
    """A snapshot is a Checkpoint CR (fulfilled by the node simulator's checkpointer) with a
    SandboxTemplate of the same name owned by it; a clone's Sandbox names the checkpoint in
    `restore-from`; deleting the snapshot deletes both CRs; a paused sandbox (no pod) is a 409."""
    src = Sandbox.create(timeout=300)
    kill_after.append(src)
    src.files.write("cp.txt", "checkpointed")
    snap = src.create_snapshot()
    cps = json.loads(kubectl("get", "checkpoints.agents.kruise.io", "-n", "default", "-o", "json"))["items"]
    mine = [c for c in cps if c.get("status", {}).get("checkpointId") == snap.snapshot_id]
    assert len(mine) == 1, cps
    cp = mine[0]
    assert cp["status"]["phase"] == "Succeeded"
    assert cp["metadata"]["labels"]["agents.kruise.io/checkpoint-id"] == snap.snapshot_id
    assert cp["metadata"]["annotations"]["agents.kruise.io/sandbox-id"] == src.sandbox_id
    tpl = json.loads(kubectl("get", "sandboxtemplates.agents.kruise.io", cp["metadata"]["name"], "-n", "default", "-o", "json"))
    assert tpl["metadata"]["ownerReferences"][0]["uid"] == cp["metadata"]["uid"]

    child = Sandbox.create(template=snap.snapshot_id)
    kill_after.append(child)
    assert child.files.read("cp.txt") == "checkpointed"
    clone = [s for s in sandbox_crs() if s["metadata"].get("labels", {}).get("agents.kruise.io/sandbox-id") == child.sandbox_id]
    assert clone[0]["metadata"]["annotations"]["agents.kruise.io/restore-from"] == snap.snapshot_id

    # The clone-only name keys (upstream): an exact name, then a prefix; refused elsewhere.
    name = f"clone-{int(time.time() * 1000) % 10**9}"
    named = Sandbox.create(template=snap.snapshot_id, metadata={EXT + "sandbox-name": name})
    kill_after.append(named)
    assert [s["metadata"]["name"] for s in sandbox_crs()
            if s["metadata"].get("labels", {}).get("agents.kruise.io/sandbox-id") == named.sandbox_id] == [name]
    assert named.files.read("cp.txt") == "checkpointed"
    status, body, _ = stack.request("POST", "/v2/sandboxes", {"templateID": snap.snapshot_id,
                                                              "metadata": {EXT + "sandbox-name": name}})
    assert status == 409, body
    prefixed = Sandbox.create(template=snap.snapshot_id, metadata={EXT + "sandbox-generate-name": "pfx-"})
    kill_after.append(prefixed)
    assert [s["metadata"]["name"].startswith("pfx-") for s in sandbox_crs()
            if s["metadata"].get("labels", {}).get("agents.kruise.io/sandbox-id") == prefixed.sandbox_id] == [True]
    for meta in ({EXT + "sandbox-name": "x"}, {EXT + "sandbox-name": "Bad_Name"},
                 {EXT + "sandbox-name": "a", EXT + "sandbox-generate-name": "b-"}):
        template = "base" if meta == {EXT + "sandbox-name": "x"} else snap.snapshot_id
        status, body, _ = stack.request("POST", "/v2/sandboxes", {"templateID": template, "metadata": meta})
        assert status == 400, (meta, body)
        assert "sandbox-" in body["message"], body

    assert Sandbox.delete_snapshot(snap.snapshot_id) is True
    wait_until(lambda: cp["metadata"]["name"] not in kubectl("get", "checkpoints.agents.kruise.io,sandboxtemplates.agents.kruise.io",
                                                             "-n", "default", "-o", "name"), timeout=60)

    assert src.pause() is True
    status, body, _ = stack.request("POST", f"/sandboxes/{src.sandbox_id}/snapshots", {})
    assert status == 409, body
    assert "resume" in body["message"], body


# --- Dynamic CSI mounts (the csi-* metadata keys and volumeMounts) ---

# The CSI driver the node simulator serves (run-kube.sh passes it to the cluster and the
# managers): its volumes are directories of this machine (volumeAttributes.path), published by a
# real CSI NodePublishVolume call from `sandbox-runtime-storage` inside the sandbox.
CSI_DRIVER = "hostdir.csi.kruise-agents.test"


@pytest.fixture
def persistent_volumes():
    """make(name, path=None, driver=..., secret_ns=None, csi=True): a PersistentVolume, deleted
    when the test ends."""
    made: list[str] = []

    def make(name: str, path=None, driver: str = CSI_DRIVER, secret_ns: str | None = None, csi: bool = True):
        spec = {"capacity": {"storage": "1Gi"}, "accessModes": ["ReadWriteMany"],
                "persistentVolumeReclaimPolicy": "Retain"}
        if csi:
            spec["csi"] = {"driver": driver, "volumeHandle": name, "volumeAttributes": {"path": str(path)}}
            if secret_ns is not None:
                spec["csi"]["nodePublishSecretRef"] = {"name": "csi-creds", "namespace": secret_ns}
        else:
            spec["hostPath"] = {"path": str(path)}
        kubectl("apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "PersistentVolume",
                                                       "metadata": {"name": name}, "spec": spec}))
        made.append(name)
        return name

    yield make
    for name in made:
        subprocess.run([os.environ["KUBECTL_BIN"], "delete", "pv", name, "--wait=false"], capture_output=True)


def create_raw(stack, body: dict) -> tuple[int, object]:
    status, out, _ = stack.request("POST", "/v2/sandboxes", {"templateID": "base", "timeout": 300, **body})
    return status, out


def test_csi_keys_and_volume_mounts_mount_a_persistent_volume(stack, kill_after, persistent_volumes, tmp_path):
    """csi-volume-name + csi-mount-point, csi-volume-config (with a subPath) and the body's
    volumeMounts each mount the PersistentVolume's directory at the requested path of the sandbox:
    what is in the volume is readable there, what the sandbox writes lands in the volume, and the
    Sandbox CR records the mounts (csi-volume-config annotation) for the controller."""
    share = tmp_path / "share"
    (share / "team").mkdir(parents=True)
    (share / "hello.txt").write_text("from the volume\n")
    (share / "team" / "t.txt").write_text("team only\n")
    pv = persistent_volumes(f"pv-share-{os.getpid()}", share)

    # The sandbox is a process of this machine (node simulator): its paths are this machine's.
    first = tmp_path / "sbx1" / "data"
    sbx = Sandbox.create(timeout=300, metadata={EXT + "csi-volume-name": pv, EXT + "csi-mount-point": str(first)})
    kill_after.append(sbx)
    assert sbx.files.read(f"{first}/hello.txt") == "from the volume\n"
    sbx.files.write(f"{first}/from-sandbox.txt", "written in the sandbox")
    assert (share / "from-sandbox.txt").read_text() == "written in the sandbox"
    assert sbx.commands.run(f"cat {first}/team/t.txt").stdout == "team only\n"
    [cr] = [c for c in claimed_crs() if sandbox_id_of(c) == sbx.sandbox_id]
    recorded = json.loads(cr["metadata"]["annotations"][EXT + "csi-volume-config"])
    assert recorded == [{"pvName": pv, "mountPath": str(first)}], recorded

    second = tmp_path / "sbx2" / "team"
    config = [{"pvName": pv, "mountPath": str(second), "subPath": "team"}]
    status, body = create_raw(stack, {"metadata": {EXT + "csi-volume-config": json.dumps(config)}})
    assert status == 201, body
    kill_after.append(body["sandboxID"])
    other = Sandbox.connect(body["sandboxID"])
    assert other.files.read(f"{second}/t.txt") == "team only\n"
    assert not other.files.exists(f"{second}/hello.txt"), "a subPath mounts only that directory"

    third = tmp_path / "sbx3" / "vol"
    status, body = create_raw(stack, {"volumeMounts": [{"name": pv, "path": str(third)}]})
    assert status == 201, body
    kill_after.append(body["sandboxID"])
    assert Sandbox.connect(body["sandboxID"]).commands.run(f"cat {third}/from-sandbox.txt").stdout == "written in the sandbox"


def test_bad_mounts_are_400s_and_take_no_sandbox(stack, persistent_volumes, tmp_path):
    """Every mount is resolved before the claim: an unknown PersistentVolume, one without CSI, a
    driver this manager does not allow, a node-publish secret outside the system namespace, a bad
    mount point, half of the key pair, a mount without runtime init — each a 400 saying what is
    wrong, and no sandbox taken (nor a PersistentVolume read for a name that cannot be one)."""
    tmp_path.joinpath("v").mkdir()
    no_csi = persistent_volumes(f"pv-hostpath-{os.getpid()}", tmp_path / "v", csi=False)
    other = persistent_volumes(f"pv-other-{os.getpid()}", tmp_path / "v", driver="nas.csi.example.com")
    foreign = persistent_volumes(f"pv-foreign-{os.getpid()}", tmp_path / "v", secret_ns="default")
    good = persistent_volumes(f"pv-good-{os.getpid()}", tmp_path / "v")
    before = len(claimed_crs())
    pair = lambda pv, at: {EXT + "csi-volume-name": pv, EXT + "csi-mount-point": at}  # noqa: E731
    cases = [
        ({"metadata": pair("no-such-pv", "/mnt/x")}, "failed to get persistent volume object by name: no-such-pv"),
        ({"metadata": pair(no_csi, "/mnt/x")}, f"no found csi object in persistent volume by name: {no_csi}"),
        ({"metadata": pair(other, "/mnt/x")}, "driver nas.csi.example.com is not supported in current environment"),
        ({"metadata": pair(foreign, "/mnt/x")}, "invalid node publish secret ref namespace: default, expected: sandbox-system"),
        ({"metadata": pair(good, "mnt/x")}, "invalid containerMountPoint [mnt/x]"),
        ({"metadata": pair(good, "/mnt/../etc")}, "invalid '..' path element"),
        ({"metadata": {EXT + "csi-volume-name": good}}, "must exist together or not at all"),
        ({"metadata": {EXT + "csi-volume-config": "[{"}}, "invalid multiCsiMountConfig"),
        ({"metadata": {**pair(good, "/mnt/x"), EXT + "skip-init-runtime": "true"}},
         "init runtime is required when csi mount is specified"),
        ({"volumeMounts": [{"name": good, "path": "/a"}, {"name": good, "path": "/a"}]}, "is duplicated"),
        ({"volumeMounts": [{"name": "", "path": "/a"}]}, "volumeMounts[0].name cannot be empty"),
        ({"volumeMounts": "nope"}, ""),
        ({"metadata": pair(f"{good}/status", "/mnt/x")}, "is not a PersistentVolume name"),
        ({"volumeMounts": [{"name": good, "path": f"/m{i}"} for i in range(33)]}, "at most 32 volume mounts"),
    ]
    for body, want in cases:
        status, out = create_raw(stack, body)
        assert status == 400 and want in str(out), (body, status, out)
    assert len(claimed_crs()) == before


def test_a_mount_that_fails_in_the_sandbox_is_a_500_and_frees_nothing_twice(stack, persistent_volumes, tmp_path):
    """A mount the sandbox cannot do (the volume's directory is missing, so the node plugin
    refuses; or a path the in-sandbox CLI refuses, like /usr/bin/x) fails the create with a 500
    that says why, and the taken sandbox is deleted (upstream's clearFailedSandbox), not left
    claimed."""
    missing = persistent_volumes(f"pv-missing-{os.getpid()}", tmp_path / "not-there")
    good_dir = tmp_path / "ok"
    good_dir.mkdir()
    good = persistent_volumes(f"pv-ok-{os.getpid()}", good_dir)
    before = {c["metadata"]["name"] for c in claimed_crs()}
    for metadata, want in (
        ({EXT + "csi-volume-name": missing, EXT + "csi-mount-point": str(tmp_path / "m1")}, "is not an existing directory"),
        ({EXT + "csi-volume-name": good, EXT + "csi-mount-point": "/usr/bin/x"}, "unsafe mount path"),
    ):
        status, out = create_raw(stack, {"metadata": metadata})
        assert status == 500 and "failed to perform csi mount" in str(out) and want in str(out), (status, out)

    def none_left():
        live = [c for c in claimed_crs() if c["metadata"]["name"] not in before
                and not c["metadata"].get("deletionTimestamp")]
        return not live

    wait_until(none_left, timeout=60, interval=0.2, what="the failed sandboxes deleted")


def test_mounts_come_back_after_pause_and_resume(stack, kill_after, persistent_volumes, tmp_path):
    """The new pod of a resumed sandbox gets its CSI mounts again: the controller's initializer
    replays `/init` and then the mounts recorded in csi-volume-config (upstream's ReCSIMount)."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "keep.txt").write_text("kept\n")
    pv = persistent_volumes(f"pv-resume-{os.getpid()}", share)
    at = tmp_path / "sbx" / "data"
    sbx = Sandbox.create(timeout=300, metadata={EXT + "csi-volume-name": pv, EXT + "csi-mount-point": str(at)})
    kill_after.append(sbx)
    assert sbx.files.read(f"{at}/keep.txt") == "kept\n"
    assert sbx.pause() is True
    # A real pod's filesystem goes with it; a simulated pod's paths are this machine's, so the
    # test takes the link away as the old pod's filesystem would.
    os.unlink(at)
    status, body, _ = stack.request("POST", f"/v2/sandboxes/{sbx.sandbox_id}/connect", {"timeout": 300})
    assert status == 201, body

    def remounted():
        [cr] = [c for c in claimed_crs() if sandbox_id_of(c) == sbx.sandbox_id]
        init = [c for c in cr.get("status", {}).get("conditions", []) if c["type"] == "RuntimeInitialized"]
        return bool(init) and init[0]["status"] == "True" and at.is_symlink()

    wait_until(remounted, timeout=60, interval=0.2, what="the mount replayed after the resume")
    assert Sandbox.connect(sbx.sandbox_id).files.read(f"{at}/keep.txt") == "kept\n"


@pytest.fixture
def runtime_set():
    """A SandboxSet `mountable` of 1 whose template has an init container named `runtime` (so
    its SandboxClaims initialise the runtime, upstream's rule), deleted with its sandboxes after."""
    kubectl("apply", "-f", "-", stdin=json.dumps({
        "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxSet",
        "metadata": {"name": "mountable", "namespace": "default"},
        "spec": {"replicas": 1, "template": {"spec": {
            "initContainers": [{"name": "runtime", "image": "agent-runtime"}],
            "containers": [{"name": "main", "image": "agent-runtime"}]}}}}))

    def available():
        st = json.loads(kubectl("get", "sandboxset", "mountable", "-n", "default", "-o", "json")).get("status", {})
        return st.get("availableReplicas", 0) >= 1

    wait_until(available, timeout=120, interval=0.5, what="SandboxSet mountable ready")
    yield "mountable"
    kubectl("delete", "sandboxset", "mountable", "-n", "default", "--wait=false")
    kubectl("delete", "sandboxclaims", "--all", "-n", "default", "--wait=false")
    kubectl("delete", "sandboxes", "-n", "default", "-l", "agents.kruise.io/sandbox-pool=mountable", "--wait=false")


def test_a_sandbox_claim_mounts_its_dynamic_volumes(stack, persistent_volumes, runtime_set, tmp_path):
    """SandboxClaim.spec.dynamicVolumesMount: the controller resolves the volumes, records them
    on the taken sandbox and mounts them after `/init`, before the claim counts it; a claim naming
    a PersistentVolume that does not exist is not satisfied and says why in a Warning event."""
    share = tmp_path / "share"
    share.mkdir()
    (share / "claimed.txt").write_text("through a claim\n")
    pv = persistent_volumes(f"pv-claim-{os.getpid()}", share)
    at = tmp_path / "claimed" / "data"

    def claim(name: str, pv_name: str):
        kubectl("apply", "-f", "-", stdin=json.dumps({
            "apiVersion": "agents.kruise.io/v1alpha1", "kind": "SandboxClaim",
            "metadata": {"name": name, "namespace": "default"},
            "spec": {"templateName": runtime_set, "createOnNoStock": True, "claimTimeout": "2m",
                     "dynamicVolumesMount": [{"pvName": pv_name, "mountPath": str(at)}]}}))

    claim("with-volume", pv)

    def claimed():
        c = json.loads(kubectl("get", "sandboxclaim", "with-volume", "-n", "default", "-o", "json"))
        return (c.get("status") or {}).get("claimedReplicas") == 1

    wait_until(claimed, timeout=120, interval=0.2, what="the claim satisfied")
    assert (at / "claimed.txt").read_text() == "through a claim\n"
    [cr] = [c for c in sandbox_crs() if c["metadata"].get("labels", {}).get("agents.kruise.io/claim-name") == "with-volume"]
    assert json.loads(cr["metadata"]["annotations"][EXT + "csi-volume-config"]) == [{"pvName": pv, "mountPath": str(at)}]

    claim("without-volume", "no-such-pv")

    def refused():
        events = json.loads(kubectl("get", "events", "-n", "default", "-o", "json"))["items"]
        return any(e.get("reason") == "InvalidCSIMount" and "no-such-pv" in (e.get("note") or e.get("message") or "")
                   for e in events)

    wait_until(refused, timeout=60, interval=0.5, what="a Warning event naming the missing volume")
    c = json.loads(kubectl("get", "sandboxclaim", "without-volume", "-n", "default", "-o", "json"))
    assert (c.get("status") or {}).get("claimedReplicas", 0) == 0, c
