"""Quick start: the unmodified E2B SDK against the embedded stack of `make run`.

Configure it only through the variables `make run` prints:

    export E2B_API_KEY=… E2B_API_URL=… E2B_SANDBOX_URL=… E2B_DOMAIN=…
    python examples/quickstart.py

It creates a sandbox, runs a command, writes and reads a file, lists sandboxes, pauses and
resumes the sandbox (the file and a background process survive), and kills it.
"""

import time

from e2b import Sandbox, SandboxQuery


def main() -> None:
    started = time.perf_counter()
    sbx = Sandbox.create(metadata={"example": "quickstart"})
    print(f"created sandbox {sbx.sandbox_id} in {(time.perf_counter() - started) * 1000:.1f} ms")

    result = sbx.commands.run("echo hello from $(hostname) && uname -sr")
    print(f"command output: {result.stdout.strip()!r} (exit code {result.exit_code})")

    sbx.files.write("notes/hello.txt", "written through the gateway\n")
    print(f"file content: {sbx.files.read('notes/hello.txt')!r}")
    print(f"files in notes/: {[e.name for e in sbx.files.list('notes')]}")

    worker = sbx.commands.run("sleep 600", background=True)
    listed = Sandbox.list(query=SandboxQuery(metadata={"example": "quickstart"})).next_items()
    print(f"sandboxes with metadata example=quickstart: {[s.sandbox_id for s in listed]}")

    assert sbx.pause(), "pause"
    print(f"paused; running: {sbx.is_running()}")
    sbx = Sandbox.connect(sbx.sandbox_id)
    print(f"resumed; running: {sbx.is_running()}")
    print(f"file after resume: {sbx.files.read('notes/hello.txt')!r}")
    alive = sbx.commands.run(f"kill -0 {worker.pid} && echo alive").stdout.strip()
    print(f"background process {worker.pid} after resume: {alive}")

    sbx.kill()
    print(f"killed; running: {sbx.is_running()}")


if __name__ == "__main__":
    main()
