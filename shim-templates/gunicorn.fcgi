#!/home/USER/bin/fcgi-shim
# fcgi-shim settings for a Python application under gunicorn (any WSGI
# application; uvicorn for ASGI works the same: see below), in the shebang
# form: put it in the web root as mysite.fcgi, chmod 755, and point the
# first line at the installed fcgi-shim. Every key is described in the
# README's "Application kinds". (For a WSGI application, kind = "wsgi"
# needs no gunicorn at all: shim-templates/flask.fcgi.)
#
# The shim starts gunicorn on a private unix socket ("{socket}" is replaced
# by its path) and relays every request to it over HTTP/1.1.
# --forwarded-allow-ips="*": only the shim can reach that socket, so
# gunicorn may trust its X-Forwarded-Proto (request.is_secure() in Django).
# For a site in a subdirectory (/blog): strip_prefix = false and env
# SCRIPT_NAME = "/blog" (gunicorn strips it and gives it to the app).
# uvicorn instead: command = ["/home/USER/venv/bin/uvicorn", "--uds", "{socket}",
#   "--proxy-headers", "--forwarded-allow-ips", "*", "myproject.asgi:application"]

# `touch mysite.fcgi` restarts the site: a new gunicorn is started and must
# accept connections before the old one stops.

[app]
kind = "http"
# One gunicorn serves all the site's mod_fcgid processes (shared, below):
# --workers (or --threads) is how many requests it serves at once.
command = ["/home/USER/venv/bin/gunicorn", "--workers", "2", "--bind", "unix:{socket}", "--forwarded-allow-ips", "*", "myproject.wsgi:application"]
# The directory that holds the project (gunicorn imports from it):
workdir = "/home/USER/myproject"
env = { DJANGO_SETTINGS_MODULE = "myproject.settings" }

# One server for all the site's processes; false: one gunicorn per process.
shared = true
start_timeout = 30
request_timeout = 30

[log]
target = "stderr"
level = "info"
