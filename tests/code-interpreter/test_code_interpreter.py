"""The e2b-code-interpreter SDK (2.11.5) against code-interpreter-v1 sandboxes through the
gateway: results, state, contexts, streaming, rich display data, DataFrames, errors, interrupt and
timeout, env vars, cwd, bash, reconnect, concurrency, a killed kernel, and bad requests answered
with the SDK's error shapes (reference e2b-protocol.md §4.8)."""

import base64
import json
import threading
import time

import pytest
from e2b import InvalidArgumentException, NotFoundException, SandboxException, TimeoutException
from e2b_code_interpreter import Sandbox
from e2b_code_interpreter.models import Context

from conftest import manager_helpers

wait_until = manager_helpers.wait_until
gateway_request = manager_helpers.gateway_request
assert_error_body = manager_helpers.assert_error_body

JUPYTER_PORT = 49999


def home_of(s: Sandbox) -> str:
    return s.commands.run("pwd").stdout.strip()


def jupyter(cistack, s: Sandbox, path: str, method: str = "GET", body: bytes | None = None, token: str | None = "sandbox", **kw):
    """A raw request to the sandbox's port 49999 through the gateway, as the SDK sends it."""
    if token == "sandbox":
        token = s._envd_access_token
    return gateway_request(cistack, s.sandbox_id, path, method=method, port=JUPYTER_PORT, token=token,
                           headers={"content-type": "application/json"}, body=body, **kw)


def test_results_state_and_execution_count(sbx):
    first = sbx.run_code("x = 41\nprint('hello')\nx + 1")
    assert first.error is None, first.error
    assert first.text == "42"
    assert [r.is_main_result for r in first.results] == [True]
    assert first.logs.stdout == ["hello\n"] and first.logs.stderr == []
    assert isinstance(first.execution_count, int) and first.execution_count >= 1
    second = sbx.run_code("x * 2")
    assert second.text == "82", "state is kept across cells"
    assert second.execution_count == first.execution_count + 1
    assert sbx.run_code("'a string'").text == "a string"
    assert sbx.run_code("y = 1").results == [], "a statement has no result"


def test_the_default_context_exists_from_the_start(new_sandbox):
    s = new_sandbox()
    contexts = s.list_code_contexts()
    assert [c.language for c in contexts] == ["python"], contexts
    assert contexts[0].cwd == home_of(s)


def test_cwd_defaults_to_the_sandbox_home(sbx):
    home = home_of(sbx)
    assert sbx.run_code("import os; os.getcwd()").text == home
    assert sbx.run_code("import os; os.path.expanduser('~')").text == home
    sbx.files.write("data/in.txt", "from the file api")
    assert sbx.run_code("open('data/in.txt').read()").text == "from the file api"


def test_contexts_create_list_restart_remove(sbx):
    home = home_of(sbx)
    sbx.commands.run("mkdir -p work")
    ctx = sbx.create_code_context(cwd=f"{home}/work")
    assert ctx.language == "python" and ctx.cwd == f"{home}/work" and ctx.id
    assert sbx.run_code("import os; os.getcwd()", context=ctx).text == f"{home}/work"
    assert sbx.run_code("z = 'in ctx'", context=ctx).error is None
    # Contexts are separate kernels.
    assert sbx.run_code("z").error.name == "NameError"
    assert sbx.run_code("z", context=ctx).text == "in ctx"
    ids = [c.id for c in sbx.list_code_contexts()]
    assert ctx.id in ids and len(ids) >= 2, ids

    sbx.restart_code_context(ctx)
    gone = sbx.run_code("z", context=ctx)
    assert gone.error is not None and gone.error.name == "NameError", "a restart starts afresh"
    assert sbx.run_code("import os; os.getcwd()", context=ctx).text == f"{home}/work", "same cwd"

    sbx.remove_code_context(ctx.id)
    assert ctx.id not in [c.id for c in sbx.list_code_contexts()]
    with pytest.raises(NotFoundException):
        sbx.run_code("1", context=ctx)
    with pytest.raises(NotFoundException):
        sbx.remove_code_context(ctx)
    with pytest.raises(NotFoundException):
        sbx.restart_code_context(ctx)


def test_streaming_callbacks_arrive_while_the_code_runs(sbx):
    seen = []
    returned_at = None

    def on(kind):
        return lambda item: seen.append((kind, time.monotonic(), item))

    code = (
        "import sys, time\n"
        "print('first', flush=True)\n"
        "print('warning', file=sys.stderr, flush=True)\n"
        "time.sleep(2)\n"
        "print('second')\n"
        "'done'"
    )
    execution = sbx.run_code(code, on_stdout=on("stdout"), on_stderr=on("stderr"), on_result=on("result"),
                             on_error=on("error"))
    returned_at = time.monotonic()
    kinds = [k for k, _, _ in seen]
    assert kinds[:2] == ["stdout", "stderr"] and "result" in kinds, kinds
    first_at = seen[0][1]
    assert returned_at - first_at > 1.0, "the first line arrived while the cell was still sleeping"
    assert seen[0][2].line == "first\n" and seen[0][2].error is False
    assert seen[1][2].error is True
    assert isinstance(seen[0][2].timestamp, str) and seen[0][2].timestamp.endswith("+00:00")
    assert execution.text == "done"

    errors = []
    sbx.run_code("raise ValueError('boom')", on_error=errors.append)
    assert [(e.name, e.value) for e in errors] == [("ValueError", "boom")]


def test_display_data_and_images(sbx):
    code = (
        "from IPython.display import display, HTML, Markdown, SVG, JSON, Latex, Javascript\n"
        "display(HTML('<b>bold</b>'))\n"
        "display(Markdown('**md**'))\n"
        "display(SVG('<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"1\" height=\"1\"/>'))\n"
        "display(JSON({'k': [1, 2]}))\n"
        "display(Latex(r'$x^2$'))\n"
        "display(Javascript('console.log(1)'))\n"
    )
    e = sbx.run_code(code)
    assert e.error is None, e.error
    assert all(not r.is_main_result for r in e.results)
    html, md, svg, js_on, latex, script = e.results
    assert html.html == "<b>bold</b>"
    assert md.markdown == "**md**"
    assert svg.svg.startswith("<svg")
    assert js_on.json == {"k": [1, 2]}
    assert latex.latex == "$x^2$"
    assert script.javascript == "console.log(1)"
    assert "html" in html.formats()

    plot = (
        "import matplotlib.pyplot as plt\n"
        "plt.plot([1, 2, 3], [1, 4, 9], label='squares')\n"
        "plt.title('Squares')\n"
        "plt.xlabel('n')\n"
        "plt.show()"
    )
    e = sbx.run_code(plot)
    assert e.error is None, e.error
    [figure] = e.results
    assert base64.b64decode(figure.png)[:8] == b"\x89PNG\r\n\x1a\n"
    assert figure.chart is not None, figure.formats()
    assert figure.chart.type.value == "line" and figure.chart.title == "Squares"
    assert figure.chart.x_label == "n"
    assert [p for p in figure.chart.elements[0].points] == [(1.0, 1.0), (2.0, 4.0), (3.0, 9.0)]

    e = sbx.run_code("from PIL import Image; Image.new('RGB', (4, 4), 'red')")
    assert base64.b64decode(e.results[0].png)[:4] == b"\x89PNG"
    assert e.results[0].is_main_result


def test_dataframes(sbx):
    e = sbx.run_code(
        "import pandas as pd\n"
        "df = pd.DataFrame({'a': [1, 2], 'b': ['x', None], 't': pd.to_datetime(['2024-01-01', '2024-01-02'])})\n"
        "df"
    )
    assert e.error is None, e.error
    [r] = e.results
    assert r.is_main_result
    assert "<table" in r.html
    assert "a" in r.text and "x" in r.text
    assert r.data == {"a": [1, 2], "b": ["x", None], "t": ["2024-01-01T00:00:00", "2024-01-02T00:00:00"]}
    assert e.logs.stderr == [], "no serialization warnings"


def test_errors_and_tracebacks(sbx):
    e = sbx.run_code("def f():\n    return 1 / 0\nf()")
    assert e.results == []
    assert e.error.name == "ZeroDivisionError"
    assert e.error.value == "division by zero"
    assert "Traceback" in e.error.traceback and "return 1 / 0" in e.error.traceback
    assert "\x1b[" not in e.error.traceback, "no ANSI colours"
    assert json.loads(e.error.to_json())["name"] == "ZeroDivisionError"
    syntax = sbx.run_code("def broken(:")
    assert syntax.error.name == "SyntaxError"
    assert sbx.run_code("'still working'").text == "still working"


def test_timeout_interrupts_the_cell_and_the_context_keeps_working(sbx):
    sbx.run_code("kept = 'state survives an interrupt'")
    started = time.monotonic()
    with pytest.raises(TimeoutException):
        sbx.run_code("import time\nfor _ in range(600):\n    time.sleep(0.1)", timeout=2)
    assert time.monotonic() - started < 30
    # The interrupted cell stops (KeyboardInterrupt) and the context takes the next one.
    after = sbx.run_code("kept", timeout=60)
    assert after.text == "state survives an interrupt"


def test_a_cell_that_ignores_the_interrupt_gets_a_fresh_kernel(new_sandbox):
    s = new_sandbox()
    s.run_code("before = 1")
    stubborn = (
        "import time\n"
        "while True:\n"
        "    try:\n"
        "        time.sleep(0.1)\n"
        "    except KeyboardInterrupt:\n"
        "        pass"
    )
    with pytest.raises(TimeoutException):
        s.run_code(stubborn, timeout=2)
    # After the interrupt timeout (10 s) its kernel is killed and replaced; the next cell is
    # told why its state is gone.
    after = s.run_code("1 + 1", timeout=120)
    assert after.text == "2"
    assert any("was restarted" in line for line in after.logs.stderr), after.logs
    assert s.run_code("before").error.name == "NameError"


def test_a_killed_kernel_is_reported_and_replaced(new_sandbox):
    s = new_sandbox()
    s.run_code("a = 1")
    e = s.run_code("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert e.error is not None and e.error.name == "ContextRestarting", e
    assert "killed by signal 9" in e.error.value
    assert s.run_code("1 + 1").text == "2"
    assert s.run_code("a").error.name == "NameError"

    # Dying between cells: the next cell runs on a new kernel and says so on stderr (or, if it
    # reached the kernel in the instant before its death was noticed, fails with the error).
    s.run_code("b = 2")
    s.run_code("import os, signal, threading\nthreading.Timer(0.3, os.kill, (os.getpid(), signal.SIGKILL)).start()")

    def told():
        ex = s.run_code("3")
        if ex.error is not None:
            return ex.error.name == "ContextRestarting"
        return ex.text == "3" and any("died" in line for line in ex.logs.stderr)

    wait_until(told, timeout=60, interval=0.2, what="a cell that reports the replaced kernel")
    assert s.run_code("b").error.name == "NameError"


def test_env_vars_per_call_do_not_leak(new_sandbox):
    s = new_sandbox(envs={"SANDBOX_WIDE": "from-create"})
    probe = "import os, subprocess\n(os.environ.get('CALL_VAR'), os.environ.get('SANDBOX_WIDE'), subprocess.run(['sh', '-c', 'echo $CALL_VAR'], capture_output=True, text=True).stdout.strip())"
    assert s.run_code(probe).text == "(None, 'from-create', '')"
    with_vars = s.run_code(probe, envs={"CALL_VAR": "it's \"quoted\"", "SANDBOX_WIDE": "overridden"})
    assert with_vars.text == "('it\\'s \"quoted\"', 'overridden', 'it\\'s \"quoted\"')", with_vars.text
    assert s.run_code(probe).text == "(None, 'from-create', '')", "the call's values are undone"
    # bash sees the sandbox's env vars and the call's, and forgets the call's too.
    bash = s.run_code("echo $SANDBOX_WIDE $CALL_VAR", language="bash", envs={"CALL_VAR": "b"})
    assert "".join(bash.logs.stdout) == "from-create b\n"
    assert "".join(s.run_code("echo [$CALL_VAR]", language="bash").logs.stdout) == "[]\n"


def test_bash(sbx):
    home = home_of(sbx)
    e = sbx.run_code("echo hello; pwd", language="bash")
    assert e.error is None, e.error
    assert "".join(e.logs.stdout) == f"hello\n{home}\n"
    sbx.run_code("export GREETING=hi; cd /tmp", language="bash")
    assert "".join(sbx.run_code("echo $GREETING; pwd", language="bash").logs.stdout) == "hi\n/tmp\n"
    assert "bash" in [c.language for c in sbx.list_code_contexts()]


def test_reconnect_to_an_existing_sandbox(sbx, sdk):
    sbx.run_code("remembered = 'across connections'")
    again = Sandbox.connect(sbx.sandbox_id, **sdk)
    assert again.run_code("remembered").text == "across connections"


def test_concurrent_executions_in_two_contexts(sbx):
    contexts = [sbx.create_code_context() for _ in range(2)]
    spans = {}

    def run(ctx):
        e = sbx.run_code("import time\nstart = time.time()\ntime.sleep(2)\n(start, time.time())", context=ctx)
        spans[ctx.id] = eval(e.text)  # noqa: S307 - a tuple of two floats printed by the kernel

    threads = [threading.Thread(target=run, args=(c,)) for c in contexts]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    (s1, e1), (s2, e2) = spans.values()
    assert s1 < e2 and s2 < e1, f"the two cells did not overlap: {spans}"
    for c in contexts:
        sbx.remove_code_context(c)


def test_bad_requests_get_the_sdk_error_shapes(cistack, sbx):
    with pytest.raises(NotFoundException) as nf:
        sbx.run_code("1", context=Context(context_id="no-such-context", language="python", cwd="/"))
    assert "no-such-context" in str(nf.value)
    with pytest.raises(SandboxException) as bad_lang:
        sbx.run_code("1", language="cobol")
    assert "400" in str(bad_lang.value) and "no kernel for language 'cobol'" in str(bad_lang.value)
    with pytest.raises(SandboxException) as bad_ctx:
        sbx.create_code_context(language="cobol")
    assert "400" in str(bad_ctx.value)
    with pytest.raises(SandboxException) as bad_cwd:
        sbx.create_code_context(cwd="/no/such/dir")
    assert "not a directory" in str(bad_cwd.value)
    with pytest.raises(InvalidArgumentException):
        sbx.run_code("1", language="python", context=sbx.list_code_contexts()[0])

    for body, want in [(b"{nope", "not valid JSON"), (b"[1]", "JSON object"), (b"{}", "code"),
                       (b'{"code": "1", "context_id": "a", "language": "python"}', "only one of"),
                       (b'{"code": "1", "env_vars": {"BAD-NAME": "x"}}', "env var name")]:
        r = jupyter(cistack, sbx, "/execute", "POST", body)
        assert r.status == 400, (body, r)
        assert_error_body(r.json(), 400)
        assert want in r.json()["message"], r
    r = jupyter(cistack, sbx, "/contexts", "POST", b"{nope")
    assert r.status == 400, r
    r = jupyter(cistack, sbx, "/contexts/nope", "DELETE")
    assert r.status == 404 and r.json()["code"] == 404, r
    r = jupyter(cistack, sbx, "/nothing-here")
    assert r.status == 404, r
    assert_error_body(r.json(), 404)


def test_execute_needs_the_sandbox_access_token(cistack, sbx):
    ok = jupyter(cistack, sbx, "/execute", "POST", b'{"code": "6 * 7"}')
    assert ok.status == 200, ok
    lines = [json.loads(x) for x in ok.text.splitlines()]
    assert lines[-1] == {"type": "end_of_execution"}
    assert {"type": "result", "text": "42", "is_main_result": True} in lines
    for token in (None, "wrong-token"):
        r = jupyter(cistack, sbx, "/execute", "POST", b'{"code": "1"}', token=token)
        assert r.status == 401, r
        assert_error_body(r.json(), 401)
    health = jupyter(cistack, sbx, "/health", token=None)
    assert health.status == 200 and health.json() == "OK", health
