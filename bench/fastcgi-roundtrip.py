"""The shim alone, without Apache: a FastCGI client sends N sequential
requests (new connection each, like mod_fcgid) for bench/hello.py to a
fcgi-shim listening on fd 0, and prints the round-trip time. For profiling
the shim and its adapter (e.g. under `strace -c -f` or `perf`); not a test.

  bench/fastcgi-roundtrip.py [--requests 20000] [--shim target/release/fcgi-shim]
"""

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def record(rtype, payload, rid=1):
    return struct.pack(">BBHHBB", 1, rtype, rid, len(payload), 0, 0) + payload


def name_value(name, value):
    out = b""
    for part in (name, value):
        out += bytes([len(part)]) if len(part) < 128 else struct.pack(">I", len(part) | 0x80000000)
    return out + name + value


def cpu_seconds(pid):
    """utime + stime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def worker_of(pid):
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        return int(name)
            except OSError:
                pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--shim", default=os.path.join(REPO, "target/release/fcgi-shim"))
    args = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="fcgi-shim-roundtrip.")
    sock_path = os.path.join(tmp, "fcgi.sock")
    settings = os.path.join(tmp, "site.toml")
    with open(settings, "w") as f:
        f.write('[app]\nkind = "wsgi"\nmodule = "hello"\npython = "%s"\npython_path = ["%s"]\n'
                % (sys.executable, os.path.join(REPO, "bench")))
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(sock_path)
    listener.listen(16)
    shim = subprocess.Popen([args.shim, settings], stdin=listener.fileno(), env={"PATH": os.environ["PATH"]})
    listener.close()
    params = b"".join(name_value(k.encode(), v.encode()) for k, v in [
        ("GATEWAY_INTERFACE", "CGI/1.1"), ("SERVER_SOFTWARE", "Apache"), ("SERVER_PROTOCOL", "HTTP/1.1"),
        ("SERVER_NAME", "127.0.0.1"), ("SERVER_PORT", "8080"), ("REMOTE_ADDR", "127.0.0.1"),
        ("REMOTE_PORT", "40000"), ("REQUEST_METHOD", "GET"), ("REQUEST_URI", "/hello"),
        ("SCRIPT_NAME", "/mysite.fcgi"), ("PATH_INFO", "/hello"), ("QUERY_STRING", ""),
        ("HTTP_HOST", "127.0.0.1:8080"), ("REDIRECT_URL", "/hello"), ("HTTP_USER_AGENT", "roundtrip"),
        ("DOCUMENT_ROOT", "/var/www"), ("SCRIPT_FILENAME", "/var/www/mysite.fcgi")])
    request = (record(1, b"\0\1\0\0\0\0\0\0") + record(4, params) + record(4, b"") + record(5, b""))
    try:
        def one():
            c = socket.socket(socket.AF_UNIX)
            c.connect(sock_path)
            c.sendall(request)
            # Up to END_REQUEST (type 3), as web servers read: not to EOF.
            data = b""
            while not (len(data) >= 16 and data[-15] == 3):
                chunk = c.recv(65536)
                if not chunk:
                    break
                data += chunk
            c.close()
            if b"Hello, world!" not in data:
                raise SystemExit("unexpected response: %r" % data[:300])

        for _ in range(200):
            one()
        worker = worker_of(shim.pid)
        cpu0 = (cpu_seconds(shim.pid), cpu_seconds(worker))
        t0 = time.perf_counter()
        for _ in range(args.requests):
            one()
        dt = time.perf_counter() - t0
        cpu1 = (cpu_seconds(shim.pid), cpu_seconds(worker))
        per = lambda i: (cpu1[i] - cpu0[i]) / args.requests * 1e6
        print("%d requests, %.1f us per request (%.0f req/s, one at a time); CPU per request: "
              "shim %.1f us, python worker %.1f us"
              % (args.requests, dt / args.requests * 1e6, args.requests / dt, per(0), per(1)))
    finally:
        shim.terminate()
        shim.wait(5)
        os.unlink(sock_path)
        os.unlink(settings)
        os.rmdir(tmp)


if __name__ == "__main__":
    main()
