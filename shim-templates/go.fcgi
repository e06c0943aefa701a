#!/home/USER/bin/fcgi-shim
# fcgi-shim settings for a Go net/http server (or any program that serves
# HTTP on the port in PORT), in the shebang form: put it in the web root as
# mysite.fcgi, chmod 755, and point the first line at the installed
# fcgi-shim. Every key is described in the README's "Application kinds".
#
# The shim starts the program and relays every request to it over HTTP/1.1.
# The program listens on 127.0.0.1 and the port in the PORT environment
# variable:
#   http.ListenAndServe("127.0.0.1:"+os.Getenv("PORT"), mux)
# (or give "{port}" or "{socket}" as an argument). The URL the visitor used
# is in X-Forwarded-Proto / -Host / -Prefix.
#
# Build on the host or for it: GOOS=linux GOARCH=amd64 CGO_ENABLED=0 go build

# `touch mysite.fcgi` restarts the site (after you upload a new binary: a
# new process must accept connections before the old one stops). Upload
# the new binary under another name and rename it over the old one: a
# running executable cannot be overwritten in place.

[app]
kind = "http"
command = ["/home/USER/myapp/myapp"]
workdir = "/home/USER/myapp"
# env = { APP_ENV = "production" }
# ready_path = "/healthz"

# One server for all the site's mod_fcgid processes (the default); false: one
# per process (needed for max_requests = N, which recycles it).
shared = true
start_timeout = 30
request_timeout = 30

[log]
target = "stderr"
level = "info"
