"""The data plane through the gateway with the SDK: commands (output, exit codes, envs, cwd,
background, stdin), files (write/read/list/exists/remove/rename/make_dir/info, a 10 MB file),
PTY (create, input, output, resize, kill), watch_dir, and a server on another port of the
sandbox (reference e2b-protocol.md §4, §6.1, §7.3)."""

import os
import threading

import pytest
from e2b import CommandExitException, FileNotFoundException, Sandbox
from e2b.sandbox.commands.command_handle import PtySize
from e2b.sandbox.filesystem.watch_handle import FilesystemEventType

from conftest import free_port
from helpers import gateway_request, wait_until


@pytest.fixture(scope="module")
def sbx(stack):
    s = Sandbox.create(timeout=600, envs={"SANDBOX_WIDE": "from-create"})
    yield s
    s.kill()


def test_commands_output_exit_codes_envs_cwd(sbx):
    r = sbx.commands.run("printf out; printf err >&2")
    assert (r.stdout, r.stderr, r.exit_code) == ("out", "err", 0)

    with pytest.raises(CommandExitException) as e:
        sbx.commands.run("echo partial; echo bad >&2; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "partial\n" and e.value.stderr == "bad\n"

    assert sbx.commands.run("echo $SANDBOX_WIDE").stdout == "from-create\n"
    r = sbx.commands.run("echo $ONE:$SANDBOX_WIDE", envs={"ONE": "1", "SANDBOX_WIDE": "overridden"})
    assert r.stdout == "1:overridden\n"
    assert sbx.commands.run("echo ${ONE:-unset}").stdout == "unset\n", "per-command envs do not leak"

    assert sbx.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    home = sbx.commands.run("pwd").stdout.strip()
    assert home and home != "/tmp"

    chunks = []
    sbx.commands.run("for i in 1 2 3; do echo line$i; done", on_stdout=chunks.append)
    assert "".join(chunks) == "line1\nline2\nline3\n"


def test_background_commands_and_stdin(sbx):
    h = sbx.commands.run("read a; echo got:$a", background=True, stdin=True)
    assert h.pid in [p.pid for p in sbx.commands.list()]
    sbx.commands.send_stdin(h.pid, "value\n")
    assert h.wait().stdout == "got:value\n"

    h = sbx.commands.run("sleep 300", background=True)
    assert sbx.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException):
        h.wait()
    assert h.pid not in [p.pid for p in sbx.commands.list()]
    assert sbx.commands.kill(h.pid) is False


def test_files(sbx):
    info = sbx.files.write("dp/a.txt", "alpha")
    assert info.name == "a.txt" and info.path.endswith("dp/a.txt")
    assert sbx.files.read("dp/a.txt") == "alpha"
    assert bytes(sbx.files.read("dp/a.txt", format="bytes")) == b"alpha"
    assert sbx.files.exists("dp/a.txt") is True
    assert sbx.files.exists("dp/missing.txt") is False
    with pytest.raises(FileNotFoundException):
        sbx.files.read("dp/missing.txt")

    sbx.files.write("dp/b.bin", b"\x00\x01\xff")
    assert bytes(sbx.files.read("dp/b.bin", format="bytes")) == b"\x00\x01\xff"
    assert sbx.files.make_dir("dp/sub") is True
    names = sorted(e.name for e in sbx.files.list("dp"))
    assert names == ["a.txt", "b.bin", "sub"]
    entry = sbx.files.get_info("dp/a.txt")
    assert entry.size == 5 and entry.type.value == "file"

    moved = sbx.files.rename("dp/a.txt", "dp/sub/c.txt")
    assert moved.path.endswith("dp/sub/c.txt")
    assert not sbx.files.exists("dp/a.txt")
    assert sbx.commands.run("cat dp/sub/c.txt").stdout == "alpha"
    sbx.files.remove("dp/sub/c.txt")
    assert not sbx.files.exists("dp/sub/c.txt")
    sbx.files.remove("dp")
    assert not sbx.files.exists("dp")


def test_ten_megabyte_file(sbx):
    data = os.urandom(10 * 1024 * 1024)
    sbx.files.write("big.bin", data)
    assert sbx.files.get_info("big.bin").size == len(data)
    assert sbx.commands.run("stat -c %s big.bin").stdout.strip() == str(len(data))
    back = bytes(sbx.files.read("big.bin", format="bytes"))
    assert back == data
    sbx.files.remove("big.bin")


def test_pty(sbx):
    out = []
    term = sbx.pty.create(PtySize(rows=24, cols=80))
    sbx.pty.resize(term.pid, PtySize(rows=33, cols=101))
    sbx.pty.send_stdin(term.pid, b"echo pty-$((6*7)); stty size; exit\n")
    result = term.wait(on_pty=out.append)
    text = b"".join(out).decode(errors="replace")
    assert result.exit_code == 0
    assert "pty-42" in text, text
    assert "33 101" in text, text

    term = sbx.pty.create(PtySize(rows=24, cols=80))
    assert term.pid in [p.pid for p in sbx.commands.list()]
    assert sbx.pty.kill(term.pid) is True
    with pytest.raises(CommandExitException):
        term.wait()
    wait_until(lambda: term.pid not in [p.pid for p in sbx.commands.list()], timeout=10, what="the PTY to go away")


def test_watch_dir(sbx):
    sbx.files.make_dir("watched")
    handle = sbx.files.watch_dir("watched")
    try:
        sbx.files.write("watched/new.txt", "hello watcher")
        seen = []

        def saw_it():
            seen.extend(handle.get_new_events())
            return any(e.name == "new.txt" and e.type in (FilesystemEventType.CREATE, FilesystemEventType.WRITE) for e in seen)

        wait_until(saw_it, timeout=20, interval=0.2, what="a watch event for new.txt")
    finally:
        handle.stop()
    sbx.files.remove("watched")


def test_parallel_commands_on_one_sandbox(sbx):
    results, errors = {}, []

    def run(i):
        try:
            results[i] = sbx.commands.run(f"echo n{i}").stdout
        except Exception as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == {i: f"n{i}\n" for i in range(8)}


def test_other_ports_through_the_gateway(stack, sbx):
    """A server inside the sandbox on another port is reached through the gateway with
    `e2b-sandbox-port` (what E2B_SANDBOX_URL makes the SDK send for get_host(port) URLs)."""
    port = free_port()
    sbx.files.write("www/index.html", "served from the sandbox")
    server = sbx.commands.run(f"cd www && exec python3 -m http.server {port}", background=True)
    try:
        r = wait_until(
            lambda: (lambda r: r if r.status == 200 else None)(gateway_request(stack, sbx.sandbox_id, "/index.html", port=port)),
            timeout=30,
            interval=0.2,
            what=f"the sandbox's HTTP server on port {port}",
        )
        assert r.body == b"served from the sandbox"
        r = gateway_request(stack, None, "/index.html", host=f"{port}-{sbx.sandbox_id}.localhost", route_headers=False)
        assert r.status == 200 and r.body == b"served from the sandbox", r
    finally:
        server.kill()
    # Nothing listens there any more: E2B's proxy contract, 502 JSON "port is not open" (which
    # the SDK turns into SandboxUnreachableException), not a hang.
    r = wait_until(
        lambda: (lambda r: r if r.status >= 500 else None)(gateway_request(stack, sbx.sandbox_id, "/index.html", port=port)),
        timeout=30,
        what="the gateway to report the closed port",
    )
    assert r.status == 502, r
    assert "port is not open" in r.json()["message"], r
    assert r.json()["sandboxId"] == sbx.sandbox_id, r
