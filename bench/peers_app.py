"""The application every setup of bench/peers.py serves (one WSGI callable,
so each setup runs one pool of processes for all workloads):

  /hello    bench/hello.py's application
  /big      a 1 MiB text/plain response (one bytes object)
  /echo     reads wsgi.input fully (CONTENT_LENGTH bytes, 64 KiB at a time)
            and answers the number of bytes read, e.g. "1048576\n"
  /django/  the Django project of bench/djbench (imported on the first such
            request, so the memory measured after the hello rounds is that
            of a hello application); a process that imported it creates
            imported/<its pid> beside this file if that directory exists
            (bench/peers.py warms up until every process did)
"""

import os

import hello

BIG = b"x" * (1 << 20)
_django = None


def _answer(start_response, body, content_type="text/plain"):
    start_response("200 OK", [("Content-Type", content_type), ("Content-Length", str(len(body)))])
    return [body]


def application(environ, start_response):
    global _django
    path = environ.get("PATH_INFO", "")
    if path == "/hello":
        return hello.application(environ, start_response)
    if path == "/big":
        return _answer(start_response, BIG)
    if path == "/echo":
        left = int(environ.get("CONTENT_LENGTH") or 0)
        read = 0
        while left > 0:
            chunk = environ["wsgi.input"].read(min(left, 65536))
            if not chunk:
                break
            read += len(chunk)
            left -= len(chunk)
        return _answer(start_response, b"%d\n" % read)
    if path.startswith("/django/"):
        if _django is None:
            from djbench.wsgi import application as django_application
            _django = django_application
            marks = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported")
            if os.path.isdir(marks):
                open(os.path.join(marks, str(os.getpid())), "w").close()
        return _django(environ, start_response)
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "10")])
    return [b"not found\n"]
