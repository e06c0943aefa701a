"""Direct mode of src/back/wsgi_adapter.py, driven the way the shim drives it.

Plays both the shim (starts the adapter as src/back/wsgi.rs does, the
listening socket inherited with FCGI_SHIM_LISTEN_FD, frames S / L / Q / X and
a framed request on the pipes) and the web server (a small FastCGI client
written from the specification). Standard library only. Prints each check;
exits 0 when all pass. Usage: direct_harness.py TEMP_DIR
"""

import json
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ADAPTER = os.path.join(HERE, "..", "..", "src", "back", "wsgi_adapter.py")
# The same program as BOOTSTRAP in src/back/wsgi.rs.
BOOTSTRAP = (
    "import os,sys\nn=int(sys.argv[1]);b=b''\n"
    "while len(b)<n:\n c=os.read(0,n-len(b))\n if not c:sys.exit(1)\n b+=c\n"
    "exec(compile(b,'<fcgi-shim wsgi adapter>','exec'))"
)
IO_TIMEOUT = 10.0

BEGIN, ABORT, END_REQUEST, PARAMS, STDIN, STDOUT, STDERR = 1, 2, 3, 4, 5, 6, 7
GET_VALUES, GET_VALUES_RESULT, UNKNOWN_TYPE = 9, 10, 11


# ---------------------------------------------------------------------------
# FastCGI client

def record(rtype, rid, content=b"", version=1):
    return struct.pack(">BBHHBx", version, rtype, rid, len(content), 0) + content


def name_values(pairs):
    out = b""
    for name, value in pairs:
        for part in (name, value):
            n = len(part)
            out += bytes((n,)) if n < 128 else struct.pack(">I", n | 0x80000000)
        out += name + value
    return out


def parse_name_values(data):
    pairs, pos = {}, 0
    while pos < len(data):
        lens = []
        for _ in range(2):
            n = data[pos]
            if n < 128:
                pos += 1
            else:
                n = struct.unpack(">I", data[pos:pos + 4])[0] & 0x7FFFFFFF
                pos += 4
            lens.append(n)
        name = data[pos:pos + lens[0]]
        pos += lens[0]
        pairs[name.decode()] = data[pos:pos + lens[1]].decode()
        pos += lens[1]
    return pairs


def stream(rtype, rid, data, chunk):
    out = b""
    for i in range(0, len(data), chunk):
        out += record(rtype, rid, data[i:i + chunk])
    return out + record(rtype, rid)


def request_bytes(rid, params, body=b"", keep=False, role=1, chunk=8000):
    out = record(BEGIN, rid, struct.pack(">HB5x", role, 1 if keep else 0))
    pairs = [(k.encode("utf-8"), v.encode("utf-8")) for k, v in params]
    out += stream(PARAMS, rid, name_values(pairs), 65535)
    return out + stream(STDIN, rid, body, chunk)


def cgi_params(method="GET", path="/", uri=None, extra=()):
    params = [("GATEWAY_INTERFACE", "CGI/1.1"), ("REQUEST_METHOD", method),
              ("SCRIPT_NAME", "/mysite.fcgi"), ("PATH_INFO", path),
              ("REQUEST_URI", uri if uri is not None else "/mysite.fcgi" + path),
              ("QUERY_STRING", ""), ("SERVER_NAME", "localhost"), ("SERVER_PORT", "80"),
              ("SERVER_PROTOCOL", "HTTP/1.1")]
    return params + list(extra)


class Conn:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(IO_TIMEOUT)
        self.sock.connect(path)
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def read_record(self):
        """(type, id, content, arrival time), or None at EOF."""
        while True:
            if len(self.buf) >= 8:
                version, rtype, rid, length, padding = struct.unpack(">BBHHBx", self.buf[:8])
                end = 8 + length + padding
                if len(self.buf) >= end:
                    content = self.buf[8:8 + length]
                    self.buf = self.buf[end:]
                    return rtype, rid, content, time.monotonic()
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buf:
                    raise AssertionError("EOF in the middle of a record")
                return None
            self.buf += chunk

    def response(self, rid):
        """(stdout bytes, [(arrival, content)], app status, protocol status)."""
        out, pieces = b"", []
        while True:
            rec = self.read_record()
            if rec is None:
                raise AssertionError("EOF before END_REQUEST")
            rtype, rrid, content, at = rec
            if rrid != rid:
                raise AssertionError("record type %d for id %d, expected %d" % (rtype, rrid, rid))
            if rtype == STDOUT:
                out += content
                if content:
                    pieces.append((at, content))
            elif rtype == END_REQUEST:
                app_status, proto = struct.unpack(">IB3x", content)
                return out, pieces, app_status, proto

    def closed(self):
        try:
            return self.sock.recv(1) == b""
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


def split_cgi(out):
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines)
    return headers, body


# ---------------------------------------------------------------------------
# The shim's side: the worker process and its frames

class Worker:
    def __init__(self, tmp, listener_fd, timeout_ms=0, script_name="auto"):
        source = open(ADAPTER, "rb").read()
        env = dict(os.environ)
        env.update(FCGI_SHIM_LISTEN_FD=str(listener_fd), FCGI_SHIM_REQUEST_TIMEOUT_MS=str(timeout_ms),
                   FCGI_SHIM_SCRIPT_NAME=script_name, PYTHONDONTWRITEBYTECODE="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, str(len(source)), "direct_app", "application", "0", HERE],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            pass_fds=[listener_fd], start_new_session=True, env=env, cwd=tmp)
        self.pid = self.proc.pid
        self.stderr = []
        self.lock = threading.Lock()
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.proc.stdin.write(source)
        self.proc.stdin.flush()
        self.out = self.proc.stdout.fileno()
        self.buf = b""

    def _drain_stderr(self):
        for line in self.proc.stderr:
            with self.lock:
                self.stderr.append(line.decode("utf-8", "replace").rstrip("\n"))

    def stderr_text(self):
        with self.lock:
            return "\n".join(self.stderr)

    def wait_stderr(self, needle, timeout=3.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if needle in self.stderr_text():
                return True
            time.sleep(0.02)
        return False

    def send_frame(self, kind, payload=b""):
        self.proc.stdin.write(kind + struct.pack(">I", len(payload)) + payload)
        self.proc.stdin.flush()

    def frame(self, timeout=IO_TIMEOUT):
        """(kind, payload), or None at EOF; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            if len(self.buf) >= 5:
                length = struct.unpack(">I", self.buf[1:5])[0]
                if len(self.buf) >= 5 + length:
                    kind, payload = self.buf[:1], self.buf[5:5 + length]
                    self.buf = self.buf[5 + length:]
                    return kind, payload
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.out], [], [], left)[0]:
                raise AssertionError("no frame from the worker within %.1fs" % timeout)
            chunk = os.read(self.out, 65536)
            if not chunk:
                if self.buf:
                    raise AssertionError("EOF in the middle of a frame")
                return None
            self.buf += chunk

    def session(self):
        """Live (non-zombie) processes of the worker's session."""
        found = []
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name, "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.pid and fields[0] != b"Z":
                found.append(int(name))
        return found

    def session_gone(self, timeout=1.0):
        """Waits (a process that closed its pipes may still be exiting) until
        no live process of the session is left; returns the last ones seen."""
        deadline = time.monotonic() + timeout
        left = self.session()
        while left and time.monotonic() < deadline:
            time.sleep(0.01)
            left = self.session()
        return left

    def kill(self):
        for pid in self.session():
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except OSError:
            pass
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


# ---------------------------------------------------------------------------
# The checks

RESULTS = []


def check(name, ok, detail=""):
    RESULTS.append(ok)
    print("%s %s%s" % ("ok  " if ok else "FAIL", name, "" if ok or not detail else ": " + detail))
    sys.stdout.flush()


def get_json(sock_path, params, rid=1):
    conn = Conn(sock_path)
    conn.send(request_bytes(rid, params))
    out, _, _, proto = conn.response(rid)
    conn.close()
    headers, body = split_cgi(out)
    return headers, json.loads(body)


# (params replacing the defaults, the SCRIPT_NAME the application must see):
# the table of auto_script_name_table in src/request.rs, and its "keep" cases.
SCRIPT_NAME_TABLE = [
    ({"SCRIPT_NAME": "/mysite.fcgi", "PATH_INFO": "/admin/login/",
      "REQUEST_URI": "/admin/login/?next=/admin/", "REDIRECT_URL": "/admin/login/"}, ""),
    ({"SCRIPT_NAME": "/blog/mysite.fcgi", "PATH_INFO": "/admin/login/",
      "REQUEST_URI": "/blog/admin/login/", "REDIRECT_URL": "/blog/admin/login/"}, "/blog"),
    ({"SCRIPT_NAME": "/blog/mysite.fcgi", "PATH_INFO": "/", "REQUEST_URI": "/blog/",
      "REDIRECT_URL": "/blog/"}, "/blog"),
    ({"SCRIPT_NAME": "/blog/mysite.fcgi", "PATH_INFO": "/a b", "REQUEST_URI": "/blog/a%20b",
      "SCRIPT_URL": "/blog/a b"}, "/blog"),
    ({"SCRIPT_NAME": "/cgi/mysite.fcgi", "PATH_INFO": "/caf\u00e9/x",
      "REQUEST_URI": "/shop/caf%C3%A9/x?q=1"}, "/shop"),
    ({"SCRIPT_NAME": "/app/mysite.fcgi", "PATH_INFO": "/internal/x", "REQUEST_URI": "/pretty/x",
      "REDIRECT_URL": "/pretty/x"}, "/app"),
    ({"SCRIPT_NAME": "/mysite.fcgi", "PATH_INFO": "/x", "REQUEST_URI": "/mysite.fcgi/x?y=1"},
     "/mysite.fcgi"),
    ({"SCRIPT_NAME": "/app", "PATH_INFO": "/x", "REQUEST_URI": "/app/x"}, "/app"),
]


def params_with(overrides):
    base = [("GATEWAY_INTERFACE", "CGI/1.1"), ("REQUEST_METHOD", "GET"), ("QUERY_STRING", ""),
            ("SERVER_NAME", "localhost"), ("SERVER_PORT", "80"), ("SERVER_PROTOCOL", "HTTP/1.1")]
    return base + list(overrides.items())


def wsgi_str(text):
    """How a UTF-8 value looks in a WSGI environ (latin-1 decoded bytes)."""
    return text.encode("utf-8").decode("latin-1")


def lend_checks(tmp, sock_path, listener_fd):
    w = Worker(tmp, listener_fd)
    try:
        kind, payload = w.frame()
        check("S ready ends with \\0direct", kind == b"S" and payload.endswith(b"\0direct"),
              "%r %r; stderr: %s" % (kind, payload, w.stderr_text()))
        if not RESULTS[-1]:
            return
        w.send_frame(b"L", b"0")
        served = 0

        # The environ: SCRIPT_NAME auto after a rewrite, httpoxy, Authorization.
        headers, seen = get_json(sock_path, params_with({
            "SCRIPT_NAME": "/blog/mysite.fcgi", "REQUEST_URI": "/blog/x", "PATH_INFO": "/x",
            "REDIRECT_URL": "/blog/x", "HTTP_PROXY": "http://evil/", "HTTP_AUTHORIZATION": "",
            "REDIRECT_HTTP_AUTHORIZATION": "Basic dTpw", "HTTP_X": "1"}))
        served += 1
        check("GET environ: SCRIPT_NAME '/blog' after a rewrite", seen.get("SCRIPT_NAME") == "/blog", repr(seen))
        check("GET environ: HTTP_PROXY absent", "HTTP_PROXY" not in seen, repr(seen))
        check("GET environ: Authorization restored", seen.get("HTTP_AUTHORIZATION") == "Basic dTpw", repr(seen))
        check("GET environ: head", headers.get("Status") == "200 OK"
              and headers.get("Content-Type") == "application/json", repr(headers))
        check("GET environ: served by the worker itself", seen.get("pid") == w.pid, repr(seen))
        wrong = []
        for overrides, want in SCRIPT_NAME_TABLE:
            _, seen = get_json(sock_path, params_with(overrides))
            served += 1
            if seen.get("SCRIPT_NAME") != wsgi_str(want):
                wrong.append((overrides, want, seen.get("SCRIPT_NAME")))
        check("SCRIPT_NAME table of src/request.rs (%d cases)" % len(SCRIPT_NAME_TABLE), not wrong, repr(wrong))

        # A local redirect: no Status line.
        conn = Conn(sock_path)
        conn.send(request_bytes(1, cgi_params(path="/redirect")))
        out, _, _, _ = conn.response(1)
        conn.close()
        served += 1
        check("local redirect: no Status line", out == b"Location: /elsewhere\r\n\r\n", repr(out))

        # POST: 1 MiB in many records, echoed byte-identical.
        body = bytes((i * 7 + i // 251) % 256 for i in range(1 << 20))
        conn = Conn(sock_path)
        conn.send(request_bytes(2, cgi_params("POST", "/echo", extra=[("CONTENT_LENGTH", str(len(body)))]),
                                body, chunk=8192))
        out, _, app_status, proto = conn.response(2)
        conn.close()
        served += 1
        headers, echoed = split_cgi(out)
        check("POST 1 MiB echoed byte-identical", echoed == body and (app_status, proto) == (0, 0),
              "%d bytes back, %r" % (len(echoed), headers))

        # Streaming: chunk by chunk.
        conn = Conn(sock_path)
        conn.send(request_bytes(1, cgi_params(path="/stream")))
        out, pieces, _, _ = conn.response(1)
        conn.close()
        served += 1
        _, streamed = split_cgi(out)
        spread = pieces[-1][0] - pieces[0][0] if pieces else 0
        check("streaming response arrives chunk by chunk",
              streamed == b"chunk0\nchunk1\nchunk2\n" and len(pieces) >= 3 and spread > 0.45,
              "%r in %d records over %.2fs" % (streamed, len(pieces), spread))

        # The application raises: 500 and a traceback on stderr.
        conn = Conn(sock_path)
        conn.send(request_bytes(1, cgi_params(path="/fail")))
        out, _, _, proto = conn.response(1)
        conn.close()
        served += 1
        headers, _ = split_cgi(out)
        check("app exception -> 500", headers.get("Status") == "500 Internal Server Error"
              and w.wait_stderr("direct_app fails on purpose"), repr(out[:80]))

        # Management records.
        conn = Conn(sock_path)
        conn.send(record(GET_VALUES, 0, name_values([(b"FCGI_MAX_CONNS", b""), (b"FCGI_MPXS_CONNS", b""),
                                                     (b"FCGI_UNKNOWN", b"")])))
        rtype, rid, content, _ = conn.read_record()
        check("GET_VALUES", (rtype, rid) == (GET_VALUES_RESULT, 0)
              and parse_name_values(content) == {"FCGI_MAX_CONNS": "1", "FCGI_MPXS_CONNS": "0"},
              repr((rtype, rid, content)))
        conn.send(record(99, 0, b"x"))
        rtype, rid, content, _ = conn.read_record()
        check("unknown management type -> UNKNOWN_TYPE", (rtype, rid, content[:1]) == (UNKNOWN_TYPE, 0, b"\x63"),
              repr((rtype, rid, content)))
        conn.close()

        # A role other than responder.
        conn = Conn(sock_path)
        conn.send(request_bytes(3, cgi_params(), role=2))
        rtype, rid, content, _ = conn.read_record()
        check("AUTHORIZER role -> END_REQUEST UNKNOWN_ROLE",
              (rtype, rid) == (END_REQUEST, 3) and content[4] == 3 and conn.closed(), repr((rtype, rid, content)))
        conn.close()

        # KEEP_CONN: two requests on one connection.
        conn = Conn(sock_path)
        pids = []
        for rid in (5, 6):
            conn.send(request_bytes(rid, cgi_params(path="/env"), keep=True))
            out, _, _, proto = conn.response(rid)
            pids.append(json.loads(split_cgi(out)[1]).get("pid"))
            served += 1
        conn.close()
        check("KEEP_CONN: two requests on one connection", pids == [w.pid, w.pid], repr(pids))

        # Malformed input: connection closed, a log line, the next one served.
        conn = Conn(sock_path)
        conn.send(record(BEGIN, 1, struct.pack(">HB5x", 1, 0), version=2))
        closed = conn.closed()
        conn.close()
        logged = w.wait_stderr("fcgi-shim: malformed FastCGI from the web server: a record of version 2; "
                               "connection closed")
        headers, seen = get_json(sock_path, cgi_params())
        served += 1
        check("bad version: closed, logged, next connection served",
              closed and logged and seen.get("pid") == w.pid, w.stderr_text()[-300:])

        # SIGUSR1 while idle in accept(): Q with the count.
        time.sleep(0.1)
        os.kill(w.pid, signal.SIGUSR1)
        kind, payload = w.frame(timeout=3)
        check("SIGUSR1 -> Q with the count", (kind, payload) == (b"Q", str(served).encode() + b"\0asked"),
              "%r %r, expected %d" % (kind, payload, served))

        # The framed path afterwards.
        environ = b"REQUEST_METHOD\0GET\0PATH_INFO\0/framed\0SCRIPT_NAME\0/mysite.fcgi\0"
        w.send_frame(b"R", environ)
        w.send_frame(b"E")
        frames = [w.frame()]
        while frames[-1] is not None and frames[-1][0] != b"D":
            frames.append(w.frame())
        kinds = [f[0] for f in frames if f]
        body = b"".join(f[1] for f in frames if f and f[0] == b"B")
        check("framed request after Q: H, B, D", kinds[0] == b"H" and kinds[-1] == b"D"
              and json.loads(body).get("PATH_INFO") == "/framed", repr(frames[:3]))

        # A lend of at most 2 requests ends by itself.
        w.send_frame(b"L", b"2")
        for _ in range(2):
            get_json(sock_path, cgi_params())
        kind, payload = w.frame(timeout=3)
        check("L 2 -> Q 2 after two requests", (kind, payload) == (b"Q", b"2\0limit"), repr((kind, payload)))

        # SIGUSR1 in the middle of a request: finished first, then Q.
        w.send_frame(b"L", b"0")
        conn = Conn(sock_path)
        conn.send(request_bytes(1, cgi_params(path="/stream")))
        first = conn.read_record()
        os.kill(w.pid, signal.SIGUSR1)
        out, _, _, proto = conn.response(1)
        conn.close()
        kind, payload = w.frame(timeout=3)
        check("SIGUSR1 during a request: finished, then Q 1",
              first is not None and out.endswith(b"chunk2\n") and (kind, payload) == (b"Q", b"1\0asked"),
              repr((out[-20:], kind, payload)))

        # Input closed: the worker ends its group, the guardian with it.
        w.proc.stdin.close()
        eof = w.frame(timeout=3) is None
        w.proc.wait(timeout=3)
        left = w.session_gone()
        check("stdin closed: worker and guardian gone", eof and not left, repr(left))
    finally:
        w.kill()


def guardian_checks(tmp, sock_path, listener_fd):
    # A crash mid-request: 502 for the web server, X for the shim.
    w = Worker(tmp, listener_fd)
    try:
        w.frame()
        w.send_frame(b"L", b"0")
        conn = Conn(sock_path)
        conn.send(request_bytes(7, cgi_params(path="/crash", uri="/crash")))
        out, _, _, proto = conn.response(7)
        conn.close()
        headers, body = split_cgi(out)
        check("crash mid-request: 502 and END_REQUEST",
              headers.get("Status") == "502 Bad Gateway" and body == b"502 Bad Gateway\n", repr(out))
        started = time.monotonic()
        frame = w.frame(timeout=3)
        fields = frame[1].split(b"\0") if frame else []
        check("crash: X frame crash/502/GET /crash",
              frame is not None and frame[0] == b"X" and fields[:3] == [b"crash", b"502", b"GET /crash"]
              and len(fields) == 4 and float(fields[3]) < 5, repr(frame))
        eof = w.frame(timeout=3) is None
        w.proc.wait(timeout=3)
        took = time.monotonic() - started
        left = w.session_gone()
        check("crash: EOF on stdout within 2s, no process left",
              eof and took < 2 and not left, "%.2fs, left %r" % (took, left))
    finally:
        w.kill()

    # A request over the timeout: 504, X timeout, worker and guardian gone.
    w = Worker(tmp, listener_fd, timeout_ms=500)
    try:
        w.frame()
        w.send_frame(b"L", b"0")
        conn = Conn(sock_path)
        started = time.monotonic()
        conn.send(request_bytes(1, cgi_params(path="/sleep")))
        out, _, _, proto = conn.response(1)
        took = time.monotonic() - started
        conn.close()
        headers, body = split_cgi(out)
        check("timeout: 504 within ~1s", headers.get("Status") == "504 Gateway Timeout"
              and body == b"504 Gateway Timeout\n" and took < 2, "%r after %.2fs" % (out, took))
        frame = w.frame(timeout=3)
        fields = frame[1].split(b"\0") if frame else []
        check("timeout: X frame timeout/504", frame is not None and frame[0] == b"X"
              and fields[:3] == [b"timeout", b"504", b"GET /mysite.fcgi/sleep"], repr(frame))
        after = w.frame(timeout=3)
        w.proc.wait(timeout=3)
        left = w.session_gone()
        check("timeout: worker and guardian gone", after is None and not left,
              "after X: %r, left %r" % (after, left))
    finally:
        w.kill()

    # Killed while idle: the guardian goes too, silently.
    w = Worker(tmp, listener_fd)
    try:
        w.frame()
        w.send_frame(b"L", b"0")
        time.sleep(0.2)
        guardian = [p for p in w.session() if p != w.pid]
        os.kill(w.pid, signal.SIGKILL)
        started = time.monotonic()
        frame = w.frame(timeout=3)
        w.proc.wait(timeout=3)
        took = time.monotonic() - started
        left = w.session_gone()
        check("killed while idle: no X frame, guardian gone within 2s",
              len(guardian) == 1 and frame is None and took < 2 and not left,
              "guardian %r, frame %r, left %r" % (guardian, frame, left))
    finally:
        w.kill()


def main():
    tmp = sys.argv[1] if len(sys.argv) > 1 else os.getcwd()
    sock_path = os.path.join(tmp, "direct.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(sock_path)
    listener.listen(16)
    try:
        lend_checks(tmp, sock_path, listener.fileno())
        guardian_checks(tmp, sock_path, listener.fileno())
    finally:
        listener.close()
    failed = RESULTS.count(False)
    print("%d checks, %d failed" % (len(RESULTS), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
