"""The baseline of make bench-code-interpreter: `1+1` executed on a bare ipykernel over ZeroMQ
with jupyter_client (the kernels' own client library), no HTTP and no service in between.

Runs with the kernels' virtualenv's Python. The kernel is started exactly as the service starts
one (same kernelspec, IPC transport, the same IPython arguments and start-up file), and one
round trip is execute_request sent -> execute_reply and the `idle` status received.

usage: <venv>/bin/python bare_kernel.py STARTUP_FILE ROUNDS   (prints a JSON list of seconds)
"""

import json
import os
import sys
import tempfile
import time

from jupyter_client import KernelManager


def main() -> None:
    startup, rounds = sys.argv[1], int(sys.argv[2])
    venv = sys.prefix
    tmp = tempfile.mkdtemp(prefix="bare-kernel-")
    km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(tmp, "k"))
    km.kernel_spec_manager.kernel_dirs = [os.path.join(venv, "share", "jupyter", "kernels")]
    km.start_kernel(
        extra_arguments=[f"--IPKernelApp.exec_files={startup}", "--InteractiveShell.colors=nocolor",
                         "--HistoryManager.hist_file=:memory:"],
        env={**os.environ, "PYDEVD_DISABLE_FILE_VALIDATION": "1", "IPYTHONDIR": os.path.join(tmp, "ipython"),
             "MPLCONFIGDIR": os.path.join(venv, "var", "matplotlib")},
        cwd=tmp,
    )
    kc = km.blocking_client()
    kc.start_channels()
    kc.wait_for_ready(timeout=120)
    out = []
    try:
        for i in range(rounds + 20):
            t = time.perf_counter()
            msg_id = kc.execute("1+1")
            replied = idle = False
            while not replied:
                replied = kc.get_shell_msg(timeout=30)["parent_header"].get("msg_id") == msg_id
            while not idle:
                m = kc.get_iopub_msg(timeout=30)
                idle = (m["parent_header"].get("msg_id") == msg_id and m["msg_type"] == "status"
                        and m["content"]["execution_state"] == "idle")
            if i >= 20:  # warm-up
                out.append(time.perf_counter() - t)
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
