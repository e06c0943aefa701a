#!/home/USER/bin/fcgi-shim
# fcgi-shim settings for a Flask application (or any WSGI application), in
# the shebang form: put it in the web root as mysite.fcgi, chmod 755, and
# point the first line at the installed fcgi-shim.
# Every key is described in the README's "Settings reference".

# `touch mysite.fcgi` restarts the site (validated first: a broken edit keeps
# the old version serving). More files to watch, relative to this file:
# watch = ["tmp/restart.txt"]

[app]
kind = "wsgi"
# module:attribute of the WSGI application. For an application factory,
# write the call: module = "myapp:create_app()".
module = "myapp:app"
# The Python that has Flask installed, e.g. your virtualenv's:
python = "/home/USER/venv/bin/python"
# Prepended to sys.path: the directory that holds myapp.py.
python_path = ["/home/USER/myapp"]
# Extra environment of the application:
# env = { FLASK_SECRET_KEY = "change-me" }

# url_for() gives the path the visitor used, never mysite.fcgi ("auto"), or
# a fixed prefix, "" for a site at the root:
# script_name = "auto"

max_requests = 0
start_timeout = 30
request_timeout = 30
# Show the Python traceback on the 503 page when the application cannot
# start. Never on a live site.
debug = false

[log]
target = "stderr"
level = "info"
