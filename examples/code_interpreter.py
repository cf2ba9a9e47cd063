"""The unmodified E2B Code Interpreter SDK against the embedded stack of `make run`.

Configure it only through the variables `make run` prints:

    export E2B_API_KEY=… E2B_API_URL=… E2B_SANDBOX_URL=… E2B_DOMAIN=…
    python examples/code_interpreter.py

It creates a `code-interpreter-v1` sandbox (the SDK's default template) and runs code in its
Jupyter kernels: a result, state kept across cells, a matplotlib chart (PNG and chart data), a
pandas DataFrame, an error with its traceback, output streamed through callbacks while the code
runs, bash, and a second context; then it kills the sandbox.
"""

import base64
import time

from e2b_code_interpreter import Sandbox


def main() -> None:
    started = time.perf_counter()
    sbx = Sandbox.create()  # template "code-interpreter-v1"
    print(f"created sandbox {sbx.sandbox_id} in {(time.perf_counter() - started) * 1000:.1f} ms")
    try:
        started = time.perf_counter()
        execution = sbx.run_code("1 + 1")
        print(f"1 + 1 = {execution.text} ({(time.perf_counter() - started) * 1000:.1f} ms)")

        sbx.run_code("greeting = 'hello from the kernel'")
        print(f"state across cells: {sbx.run_code('greeting.upper()').text!r}")

        chart = sbx.run_code(
            "import matplotlib.pyplot as plt\n"
            "plt.plot([1, 2, 3, 4], [1, 4, 9, 16])\n"
            "plt.title('Squares')\n"
            "plt.show()"
        )
        figure = chart.results[0]
        png = base64.b64decode(figure.png)
        print(f"chart: {len(png)} bytes of PNG, formats {list(figure.formats())}")
        print(f"chart data: type={figure.chart.type.value} title={figure.chart.title!r} "
              f"points={figure.chart.elements[0].points}")

        frame = sbx.run_code(
            "import pandas as pd\n"
            "pd.DataFrame({'city': ['Oslo', 'Lima'], 'temperature': [4.5, 19.0]})"
        )
        table = frame.results[0]
        print(f"DataFrame as data: {table.data}")
        print(f"DataFrame as text:\n{table.text}")

        failed = sbx.run_code("1 / 0")
        print(f"error: {failed.error.name}: {failed.error.value}")
        print("traceback:\n" + failed.error.traceback)

        print("streaming (each line printed as it arrives):")
        t0 = time.perf_counter()
        sbx.run_code(
            "import time\nfor i in range(3):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.5)\n'done'",
            on_stdout=lambda m: print(f"  +{time.perf_counter() - t0:.2f}s stdout: {m.line.strip()}"),
            on_stderr=lambda m: print(f"  +{time.perf_counter() - t0:.2f}s stderr: {m.line.strip()}"),
            on_result=lambda r: print(f"  +{time.perf_counter() - t0:.2f}s result: {r.text}"),
            on_error=lambda e: print(f"  +{time.perf_counter() - t0:.2f}s error: {e.name}"),
        )

        bash = sbx.run_code("echo running in $(pwd) as $(whoami)", language="bash")
        print(f"bash: {''.join(bash.logs.stdout).strip()}")

        ctx = sbx.create_code_context(cwd="/tmp")
        print(f"new context {ctx.id} (cwd {ctx.cwd}): "
              f"{sbx.run_code('import os; os.getcwd()', context=ctx).text}")
        print(f"contexts: {[(c.language, c.cwd) for c in sbx.list_code_contexts()]}")
    finally:
        sbx.kill()
        print("killed")


if __name__ == "__main__":
    main()
