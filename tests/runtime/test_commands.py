"""Commands through the real SDK: foreground, background, connect, kill, stdin, env, cwd, users,
exit codes, timeouts."""

import os
import time
import uuid

import pytest

from e2b import (
    AuthenticationException,
    CommandExitException,
    InvalidArgumentException,
    NotFoundException,
    TimeoutException,
)


def wait_until(pred, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_foreground_stdout_stderr_exit_code(sandbox):
    r = sandbox.commands.run("echo out; echo err >&2; printf 'no newline'")
    assert r.exit_code == 0
    assert r.stdout == "out\nno newline"
    assert r.stderr == "err\n"
    assert r.error is None


def test_streaming_callbacks_receive_output_in_order(sandbox):
    chunks = []
    r = sandbox.commands.run("for i in 1 2 3; do echo line$i; sleep 0.05; done", on_stdout=chunks.append)
    assert "".join(chunks) == "line1\nline2\nline3\n" == r.stdout


def test_nonzero_exit_raises_with_details(sandbox):
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("echo partial; echo broken >&2; exit 3")
    assert e.value.exit_code == 3
    assert e.value.stdout == "partial\n"
    assert e.value.stderr == "broken\n"
    assert e.value.error == "exit status 3"


def test_large_output_is_complete(sandbox):
    r = sandbox.commands.run("head -c 3000000 /dev/zero | tr '\\0' 'a'")
    assert len(r.stdout) == 3_000_000
    assert set(r.stdout) == {"a"}


def test_background_list_connect_kill(sandbox):
    h = sandbox.commands.run("sleep 30", background=True)
    assert h.pid in [p.pid for p in sandbox.commands.list()]
    listed = next(p for p in sandbox.commands.list() if p.pid == h.pid)
    assert listed.cmd == "/bin/bash"
    assert listed.args == ["-l", "-c", "sleep 30"]
    again = sandbox.commands.connect(h.pid)
    assert sandbox.commands.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        again.wait()
    assert e.value.exit_code == -1
    assert e.value.error == "signal: killed"
    assert wait_until(lambda: h.pid not in [p.pid for p in sandbox.commands.list()])
    # A finished process can no longer be signalled: the SDK reports False.
    assert sandbox.commands.kill(h.pid) is False


def test_kill_reaches_children_of_the_shell(sandbox):
    marker = f"/tmp/child-{uuid.uuid4().hex}"
    h = sandbox.commands.run(f"(sleep 30; touch {marker}) & sleep 30", background=True)
    time.sleep(0.2)
    h.kill()
    with pytest.raises(CommandExitException):
        h.wait()

    def group_alive():
        ps = sandbox.commands.run("ps -eo pgid=,stat=").stdout.split("\n")
        return any(line.split()[0] == str(h.pid) and "Z" not in line.split()[1] for line in ps if line.strip())

    assert wait_until(lambda: not group_alive())


def test_disconnect_does_not_kill_and_connect_reattaches(sandbox):
    h = sandbox.commands.run("sleep 1; echo finished", background=True)
    h.disconnect()
    assert h.pid in [p.pid for p in sandbox.commands.list()]
    r = sandbox.commands.connect(h.pid).wait()
    assert r.exit_code == 0
    assert r.stdout == "finished\n"


def test_connect_after_the_process_ended_gets_its_end(sandbox):
    h = sandbox.commands.run("exit 7", background=True)
    assert wait_until(lambda: h.pid not in [p.pid for p in sandbox.commands.list()])
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.connect(h.pid).wait()
    assert e.value.exit_code == 7


def test_unknown_pid(sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999_999).wait()
    assert sandbox.commands.kill(999_999) is False
    with pytest.raises(NotFoundException):
        sandbox.commands.send_stdin(999_999, "x")


def test_send_stdin_and_close_stdin(sandbox):
    h = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.send_stdin(h.pid, "hello\n")
    sandbox.commands.send_stdin(h.pid, b"bytes\n")
    sandbox.commands.close_stdin(h.pid)
    r = h.wait()
    assert r.stdout == "hello\nbytes\n"


def test_stream_input(sandbox):
    h = sandbox.commands.run("wc -c", background=True, stdin=True)
    sandbox.commands.stream_input(h.pid, (f"chunk{i}\n" for i in range(100)))
    sandbox.commands.close_stdin(h.pid)
    assert int(h.wait().stdout.strip()) == sum(len(f"chunk{i}\n") for i in range(100))


def test_stdin_disabled_by_default(sandbox):
    # Without stdin=True the process reads /dev/null and finishes at once.
    assert sandbox.commands.run("cat; echo done").stdout == "done\n"


def test_env_vars_per_call_and_no_leak(sandbox):
    assert sandbox.commands.run('echo "$FOO"', envs={"FOO": "bar"}).stdout == "bar\n"
    assert sandbox.commands.run('echo "[$FOO]"').stdout == "[]\n"


def test_process_environment(runtime, sandbox):
    env = dict(
        line.split("=", 1)
        for line in sandbox.commands.run("env").stdout.splitlines()
        if "=" in line
    )
    assert env["HOME"] == str(runtime.home)
    assert env["USER"] == env["LOGNAME"] == runtime.user
    assert env["E2B_SANDBOX"] == "true"
    assert "PATH" in env


def test_cwd(runtime, sandbox):
    assert sandbox.commands.run("pwd").stdout.strip() == str(runtime.home)
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout.strip() == "/tmp"
    sandbox.files.make_dir("sub-for-cwd")
    assert sandbox.commands.run("pwd", cwd="sub-for-cwd").stdout.strip() == f"{runtime.home}/sub-for-cwd"
    with pytest.raises(InvalidArgumentException) as e:
        sandbox.commands.run("pwd", cwd="/does/not/exist")
    assert "cwd '/does/not/exist' does not exist" in str(e.value)


def test_users(runtime, sandbox):
    assert sandbox.commands.run("whoami").stdout.strip() == runtime.user
    assert sandbox.commands.run("whoami", user=runtime.user).stdout.strip() == runtime.user
    with pytest.raises(AuthenticationException) as e:
        sandbox.commands.run("whoami", user="no-such-user-xyz")
    assert "invalid username: 'no-such-user-xyz'" in str(e.value)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs a daemon running as root")
def test_other_user_when_root(sandbox):
    r = sandbox.commands.run("id -u; id -g; echo $HOME $USER", user="nobody", cwd="/tmp")
    uid, gid, rest = r.stdout.splitlines()
    assert uid == "65534"
    assert rest.split()[1] == "nobody"
    name = f"owned-{uuid.uuid4().hex}.txt"
    info = sandbox.files.write(f"/tmp/{name}", "x", user="nobody")
    assert sandbox.files.get_info(info.path).owner == "nobody"
    sandbox.files.remove(info.path)


def test_timeout_kills_the_process(sandbox):
    marker = uuid.uuid4().hex
    with pytest.raises(TimeoutException):
        sandbox.commands.run(f"sleep 20; echo {marker}", timeout=1)
    assert wait_until(lambda: f"echo {marker}" not in sandbox.commands.run("ps -eo args").stdout, timeout=5)


def test_background_timeout_zero_runs_until_killed(sandbox):
    h = sandbox.commands.run("sleep 30", background=True, timeout=0)
    time.sleep(0.3)
    assert h.pid in [p.pid for p in sandbox.commands.list()]
    h.kill()


def test_tagless_list_shows_only_running(sandbox):
    h = sandbox.commands.run("true", background=True)
    h.wait()
    assert h.pid not in [p.pid for p in sandbox.commands.list()]


def test_invalid_utf8_is_replaced(sandbox):
    r = sandbox.commands.run("printf 'a\\xe2b'")
    assert r.stdout == "a\ufffdb"
