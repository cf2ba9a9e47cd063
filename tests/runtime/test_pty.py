"""PTY sessions through the real SDK: create, input, resize, connect, kill."""

import time

import pytest

from e2b import CommandExitException, PtySize


def read_until(handle_output, needle, timeout=5.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if needle in b"".join(handle_output):
            return True
        time.sleep(0.02)
    return False


def test_pty_echo_and_exit(sandbox):
    out = []
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(h.pid, b"echo $((6*7)); tty; exit 5\n")
    with pytest.raises(CommandExitException) as e:
        h.wait(on_pty=out.append)
    assert e.value.exit_code == 5
    text = b"".join(out).decode(errors="replace")
    assert "42" in text
    assert "/dev/pts/" in text


def test_pty_env_and_terminal_type(sandbox):
    out = []
    h = sandbox.pty.create(PtySize(rows=24, cols=80), envs={"PTYVAR": "pty-value"})
    sandbox.pty.send_stdin(h.pid, b"echo $PTYVAR $TERM; exit\n")
    assert h.wait(on_pty=out.append).exit_code == 0
    text = b"".join(out).decode(errors="replace")
    assert "pty-value xterm-256color" in text


def test_pty_resize(sandbox):
    out = []
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.resize(h.pid, PtySize(rows=50, cols=120))
    sandbox.pty.send_stdin(h.pid, b"stty size; exit\n")
    h.wait(on_pty=out.append)
    assert "50 120" in b"".join(out).decode(errors="replace")


def test_pty_connect_and_kill(sandbox):
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    h.disconnect()
    out = []
    again = sandbox.pty.connect(h.pid)
    sandbox.pty.send_stdin(h.pid, b"echo reattached\n")
    assert sandbox.pty.kill(h.pid) is True
    with pytest.raises(CommandExitException) as e:
        again.wait(on_pty=out.append)
    assert e.value.exit_code == -1
    assert sandbox.pty.kill(h.pid) is False


def test_ctrl_c_interrupts_the_foreground_job(sandbox):
    out = []
    h = sandbox.pty.create(PtySize(rows=24, cols=80))
    sandbox.pty.send_stdin(h.pid, b"sleep 30\n")
    time.sleep(0.3)
    sandbox.pty.send_stdin(h.pid, b"\x03")
    sandbox.pty.send_stdin(h.pid, b"echo after-interrupt; exit\n")
    start = time.time()
    h.wait(on_pty=out.append)
    assert time.time() - start < 10
    assert "after-interrupt" in b"".join(out).decode(errors="replace")
