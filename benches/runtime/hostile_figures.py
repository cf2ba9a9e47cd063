"""Descriptor and memory figures of agent-runtime under the hostile-input rules (docs/runtime.md).

Usage: python3 benches/runtime/hostile_figures.py <agent-runtime binary> [starts=1000] [gib=1]

Starts the daemon on a free loopback port with a scratch home, runs <starts> sequential `Start`
of /bin/true with the SDK's default stdin (a pipe) and prints the daemon's open descriptors
before and after, then uploads <gib> GiB of zeros as a gzip-encoded multipart body (about 1 MB on
the wire) and prints the daemon's peak RSS (VmHWM).
"""
import gzip, http.client, json, os, socket, struct, subprocess, sys, tempfile, time


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def status_mib(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024


def main():
    binary = sys.argv[1]
    starts = int(sys.argv[2]) if len(sys.argv) > 2 else 1000
    gib = int(sys.argv[3]) if len(sys.argv) > 3 else 1
    home = tempfile.mkdtemp(prefix="rt-figures-")
    port = free_port()
    user = subprocess.run(["id", "-un"], capture_output=True, text=True).stdout.strip()
    daemon = subprocess.Popen(
        [binary, "--listen", f"127.0.0.1:{port}", "--default-workdir", home, "--default-user", user],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={"PATH": os.environ["PATH"], "HOME": home},
    )
    try:
        deadline = time.time() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                if time.time() > deadline or daemon.poll() is not None:
                    sys.exit("agent-runtime did not start")
                time.sleep(0.05)
        fds = lambda: len(os.listdir(f"/proc/{daemon.pid}/fd"))
        conn = http.client.HTTPConnection("127.0.0.1", port)
        msg = json.dumps({"process": {"cmd": "/bin/true"}}).encode()
        envelope = b"\0" + struct.pack(">I", len(msg)) + msg
        print(f"fds at start: {fds()}, RSS {status_mib(daemon.pid, 'VmRSS')} MiB")
        for _ in range(starts):
            conn.request("POST", "/process.Process/Start", body=envelope,
                         headers={"content-type": "application/connect+json"})
            conn.getresponse().read()
        print(f"fds after {starts} sequential Start of /bin/true (default stdin): {fds()}, "
              f"RSS {status_mib(daemon.pid, 'VmRSS')} MiB")
        boundary = "XyZ"
        head = f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="z.bin"\r\n\r\n'
        one_mib = gzip.compress(b"\0" * (1 << 20), 9)
        body = gzip.compress(head.encode()) + one_mib * (gib * 1024) + gzip.compress(f"\r\n--{boundary}--\r\n".encode())
        target = os.path.join(home, "z.bin")
        started = time.time()
        conn.request("POST", f"/files?path={target}", body=body,
                     headers={"content-type": f"multipart/form-data; boundary={boundary}", "content-encoding": "gzip"})
        resp = conn.getresponse()
        resp.read()
        print(f"gzip multipart upload: {len(body)} bytes on the wire -> {os.path.getsize(target) >> 20} MiB on disk, "
              f"status {resp.status}, {time.time() - started:.1f} s; peak RSS (VmHWM) {status_mib(daemon.pid, 'VmHWM')} MiB")
    finally:
        daemon.terminate()
        daemon.wait()
        subprocess.run(["rm", "-rf", home])


if __name__ == "__main__":
    main()
