"""A small HTTP/1.1 application for tests/server_backs.rs (standard library only).

Listens on 127.0.0.1:$PORT, or on the unix socket named by argv[1].
Routes: /env (what arrived: method, target, headers, body length and sha256,
pid), /cookies (two Set-Cookie), /chunked (three chunks 0.3 s apart),
/redirect (302 to /env), /garbage (not HTTP), /sleep (10 s), /die (exits mid-request), /health
(503 until the file named by $READY_FILE exists, then 200)."""
import hashlib
import http.server
import os
import socketserver
import sys
import time


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        sys.stderr.write("app: " + (fmt % args) + "\n")

    def address_string(self):
        return "-"

    def body(self):
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def send(self, status, body, headers=()):
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        path = self.path.split("?")[0]
        if path.endswith("/cookies"):
            return self.send(200, b"two cookies", [("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
        if path.endswith("/chunked"):
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for i in range(3):
                piece = b"chunk%d\n" % i
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.flush()
                time.sleep(0.3)
            self.wfile.write(b"0\r\n\r\n")
            return
        if path.endswith("/redirect"):
            return self.send(302, b"", [("Location", "/env")])
        if path.endswith("/garbage"):
            self.wfile.write(b"THIS IS NOT HTTP\r\n\r\n")
            self.close_connection = True
            return
        if path.endswith("/sleep"):
            time.sleep(10)
        if path.endswith("/die"):
            sys.stderr.write("app: dying on purpose\n")
            sys.stderr.flush()
            os._exit(3)
        if path.endswith("/health"):
            ready = os.path.exists(os.environ.get("READY_FILE", "/nonexistent"))
            return self.send(200 if ready else 503, b"health")
        body = self.body()
        lines = ["method=" + self.command, "target=" + self.path, "pid=%d" % os.getpid(),
                 "greeting=" + os.environ.get("GREETING", ""),
                 "length=%d" % len(body), "sha256=" + hashlib.sha256(body).hexdigest()]
        lines += ["h:%s=%s" % (k.lower(), v) for k, v in self.headers.items()]
        self.send(200, ("\n".join(lines) + "\n").encode(), [("Content-Type", "text/plain")])

    do_POST = do_GET
    do_PUT = do_GET
    do_HEAD = do_GET


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if len(sys.argv) > 1:
    server = UnixServer(sys.argv[1], Handler)
else:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler)
sys.stderr.write("app: listening\n")
sys.stderr.flush()
server.serve_forever()
