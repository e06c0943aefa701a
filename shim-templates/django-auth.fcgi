#!/home/USER/bin/fcgi-shim
# fcgi-shim settings for an Apache authenticator that checks Django's users
# (django.contrib.auth.authenticate): the program of FcgidAuthenticator and
# FcgidAuthorizer in htaccess-examples/protect-directory.htaccess. Put it
# OUTSIDE the web root (e.g. in your home directory), chmod 755, point the
# first line at the installed fcgi-shim, and put django_fcgi_auth.py (beside
# this template) in your project, beside manage.py.
# Every key is described in the README's "Settings reference".

[app]
kind = "wsgi"
module = "django_fcgi_auth:application"
# The Python that has Django installed, e.g. your virtualenv's:
python = "/home/USER/venv/bin/python"
# Prepended to sys.path: the directory that holds manage.py and django_fcgi_auth.py.
python_path = ["/home/USER/myproject"]
env = { DJANGO_SETTINGS_MODULE = "myproject.settings" }

# Time for Django to start, then 503 (Apache refuses the visitor):
start_timeout = 30
request_timeout = 30
debug = false

[log]
# stderr is Apache's error log: "django-auth: allowed bob", "... refused bob: wrong password".
target = "stderr"
level = "info"
