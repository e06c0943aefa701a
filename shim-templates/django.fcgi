#!/home/USER/bin/fcgi-shim
# fcgi-shim settings for a Django project, in the shebang form: this file is
# both the settings and the program Apache runs. Put it in the web root as
# mysite.fcgi, chmod 755, and point the first line at the installed
# fcgi-shim. It replaces Django's old mysite.fcgi (sys.path, settings module,
# runfastcgi) line by line; nothing needs to be pip-installed but Django.
# Every key is described in the README's "Settings reference".

# `touch mysite.fcgi` restarts the site (validated first: a broken edit keeps
# the old version serving). More files to watch, relative to this file:
# watch = ["tmp/restart.txt"]

[app]
kind = "wsgi"
# The project's WSGI application (manage.py startproject makes myproject/wsgi.py):
module = "myproject.wsgi:application"
# The Python that has Django installed, e.g. your virtualenv's:
python = "/home/USER/venv/bin/python"
# Prepended to sys.path: the directory that holds manage.py.
python_path = ["/home/USER/myproject"]
# The worker's working directory (default: this file's directory):
# workdir = "/home/USER/myproject"
env = { DJANGO_SETTINGS_MODULE = "myproject.settings" }

# URLs Django builds ({% url %}, reverse(), redirects) use the path the visitor
# used, never mysite.fcgi: "auto" works it out from Apache's rewrite, also for
# a site in a subdirectory. Or give the prefix yourself (Django's
# FORCE_SCRIPT_NAME), "" for a site at the root:
# script_name = "auto"

# Requested (GET) from every new worker before it serves, also when a touch
# is validated: Django imports views on the first request, so this is what
# catches a SyntaxError in views.py (the old version keeps serving) and makes
# the first visitor meet a warm worker. A 5xx fails the start. Or a health
# URL; the Host is "localhost" (put it in ALLOWED_HOSTS), and the request
# carries the header X-Fcgi-Shim-Warmup: 1.
warmup = "/"

# Replace the worker after this many requests (0 = never):
max_requests = 0
# Time for Django to start (imports, settings), then 503:
start_timeout = 30
# Time for one request, then 504 and a fresh worker:
request_timeout = 30
# Show the Python traceback on the 503 page when the project cannot start.
# Never on a live site.
debug = false

[log]
# stderr is Apache's error log under mod_fcgid; wsgi.errors and print() go there too.
target = "stderr"
level = "info"
