"""An SCGI application under flup for tests/server_backs.rs: argv[1] is the unix socket."""
import os
import sys

from flup.server.scgi import WSGIServer


def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    start_response("201 Created", [("Content-Type", "text/plain"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    return [b"SCGI %s %s pid=%d body=%s" % (environ["REQUEST_METHOD"].encode(), environ["PATH_INFO"].encode(), os.getpid(), body)]


WSGIServer(app, bindAddress=sys.argv[1]).run()
