"""A WSGI application for fcgi-shim's tests: one behaviour per PATH_INFO.

Standard library only. Wrapped in wsgiref.validate.validator, so any PEP 3333
violation by the adapter (or by this app) raises and shows up as a 500.
"""

import json
import os
import signal
import sys
import time
from wsgiref.validate import validator


def text(start_response, body, status="200 OK", ctype="text/plain; charset=utf-8"):
    data = body.encode("utf-8")
    start_response(status, [("Content-Type", ctype), ("Content-Length", str(len(data)))])
    return [data]


def wait_for(path, limit=20.0):
    deadline = time.monotonic() + limit
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise RuntimeError("gave up waiting for " + path)
        time.sleep(0.01)


def raw_app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/hello":
        return text(start_response, "hello from wsgi")
    if path == "/environ":
        shown = {k: v for k, v in environ.items() if isinstance(v, str)}
        shown["wsgi.url_scheme"] = environ["wsgi.url_scheme"]
        shown["wsgi.version"] = list(environ["wsgi.version"])
        shown["wsgi.multithread"] = environ["wsgi.multithread"]
        shown["wsgi.run_once"] = environ["wsgi.run_once"]
        shown["os.environ.PROBE"] = os.environ.get("PROBE", "")
        shown["cwd"] = os.getcwd()
        shown["sys.path"] = sys.path
        shown["pid"] = os.getpid()
        return text(start_response, json.dumps(shown), ctype="application/json")
    if path == "/echo":
        # Read in odd-sized pieces and by lines, to exercise wsgi.input.
        inp = environ["wsgi.input"]
        parts = [inp.read(1), inp.readline(100), inp.read(70000)]
        while True:
            chunk = inp.read(65537)
            if not chunk:
                break
            parts.append(chunk)
        assert inp.read(10) == b"" and inp.readline() == b""
        body = b"".join(parts)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(len(body)))])
        return [body]
    if path == "/lines":
        lines = list(environ["wsgi.input"])
        return text(start_response, "%d lines, last %r" % (len(lines), lines[-1] if lines else None))
    if path == "/ignore-body":
        return text(start_response, "ignored")
    if path == "/stream":
        gate = environ["QUERY_STRING"]

        def gen():
            yield b"first chunk\n"
            wait_for(gate)
            yield b"last chunk\n"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return gen()
    if path == "/big":
        n = int(environ.get("QUERY_STRING") or "1000000")
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(n))])
        block = bytes(range(256)) * 256
        return (block[: min(len(block), n - i)] for i in range(0, n, len(block)))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written, ")
        return [b"then returned"]
    if path == "/file":
        f = open(__file__, "rb")
        start_response("200 OK", [("Content-Type", "text/x-python")])
        return environ["wsgi.file_wrapper"](f, 4096)
    if path == "/close":
        marker = environ["QUERY_STRING"]

        class Body:
            def __iter__(self):
                yield b"body"

            def close(self):
                with open(marker, "w") as f:
                    f.write("closed")

        start_response("200 OK", [("Content-Type", "text/plain")])
        return Body()
    if path == "/raise":
        raise ValueError("probe raised on purpose")
    if path == "/exc-info":
        try:
            raise KeyError("oops")
        except KeyError:
            start_response("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())
        return [b"handled with exc_info"]
    if path == "/errors":
        environ["wsgi.errors"].write("probe wrote to wsgi.errors\n")
        environ["wsgi.errors"].flush()
        print("probe printed to stdout")
        return text(start_response, "logged")
    if path == "/crash":
        sys.stderr.write("probe about to crash\n")
        sys.stderr.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    if path == "/sleep":
        time.sleep(float(environ.get("QUERY_STRING") or "30"))
        return text(start_response, "slept")
    if path == "/redirect":
        start_response("302 Found", [("Location", "/hello"), ("Content-Type", "text/plain")])
        return [b""]
    if path == "/early":
        # Answers (1 MiB) before reading the body it was sent.
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return [b"e" * (1 << 20)]
    if path == "/status":
        return text(start_response, "teapot", status="418 I'm a teapot")
    return text(start_response, "no such probe " + path, status="404 Not Found")


application = validator(raw_app)
