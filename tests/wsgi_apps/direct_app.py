"""The application tests/wsgi_apps/direct_harness.py serves in direct mode
(standard library only). Routes by PATH_INFO."""

import json
import os
import signal
import time

CGI_KEYS = ("SCRIPT_NAME", "PATH_INFO", "REQUEST_URI", "HTTP_AUTHORIZATION", "HTTP_PROXY",
            "REDIRECT_HTTP_AUTHORIZATION", "HTTP_X", "wsgi.url_scheme")


def application(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/echo":
        body = environ["wsgi.input"].read()
        start_response("200 OK", [("Content-Type", "application/octet-stream"),
                                  ("Content-Length", str(len(body)))])
        return [body]
    if path == "/stream":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return stream()
    if path == "/fail":
        raise RuntimeError("direct_app fails on purpose")
    if path == "/crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if path == "/sleep":
        time.sleep(30)
    if path == "/redirect":
        start_response("200 OK", [("Location", "/elsewhere")])
        return [b""]
    seen = {k: environ[k] for k in CGI_KEYS if k in environ}
    seen["pid"] = os.getpid()
    body = json.dumps(seen, sort_keys=True).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


def stream():
    for i in range(3):
        yield ("chunk%d\n" % i).encode()
        time.sleep(0.3)
