#!/home/USER/bin/fcgi-shim
# fcgi-shim settings in the shebang form: this file is both the settings and
# the program Apache runs. Put it in the web root as mysite.fcgi, chmod 755,
# and point the first line at the installed fcgi-shim executable.
# Every key is described in the README's "Settings reference".

# `touch mysite.fcgi` restarts the site (validated first: a broken edit keeps
# the old version serving). More files to watch, relative to this file:
# watch = ["tmp/restart.txt"]

[app]
kind = "cgi"
# The CGI program run for every request (absolute, or relative to this file):
command = ["/home/USER/app/run.cgi"]
# ...or run the CGI program the web server names in SCRIPT_FILENAME,
# only if it lies under this directory:
# root = "/home/USER/public_html/cgi-bin"

# Kill the program and answer 504 after this long:
timeout = 30
# Extra environment for the program:
# env = { APP_MODE = "production" }

[log]
# stderr is Apache's error log under mod_fcgid.
target = "stderr"
level = "info"
