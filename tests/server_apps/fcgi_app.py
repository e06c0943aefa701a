"""A FastCGI application under flup for tests/server_backs.rs: it serves the
listening socket on fd 0, as mod_fcgid starts FastCGI programs."""
import os

from flup.server.fcgi import WSGIServer


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"FLUP FCGI %s pid=%d" % (environ["PATH_INFO"].encode(), os.getpid())]


WSGIServer(app).run()
