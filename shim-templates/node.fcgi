#!/home/USER/bin/fcgi-shim
# fcgi-shim settings for a Node.js application (the plain http module,
# Express, Koa, Fastify ...), in the shebang form: put it in the web root as
# mysite.fcgi, chmod 755, and point the first line at the installed
# fcgi-shim. Every key is described in the README's "Application kinds".
#
# The shim starts your server and relays every request to it over HTTP/1.1.
# Your server listens where the shim says: on 127.0.0.1 and the port in the
# PORT environment variable, as most Node.js hosting expects:
#   app.listen(process.env.PORT, '127.0.0.1')
# (or give "{socket}" as an argument and listen on that unix socket path).
# The URL the visitor used is in X-Forwarded-Proto / -Host / -Prefix; with
# Express, app.set('trust proxy', 'loopback') makes req.protocol and
# req.hostname use them. In a subdirectory (/blog) the server gets the path
# without it (/users for /blog/users) and its redirects to /login reach the
# visitor as /blog/login; strip_prefix = false passes the whole path.

# `touch mysite.fcgi` restarts the site: a new server is started and must
# accept connections before the old one stops. More files to watch,
# relative to this file:
# watch = ["tmp/restart.txt"]

[app]
kind = "http"
# The node that runs your code (`command -v node`; a user install such as
# /home/USER/.nvm/versions/node/v20.11.0/bin/node works as well):
command = ["/usr/bin/node", "/home/USER/myapp/server.js"]
# Its working directory (where node_modules is found from):
workdir = "/home/USER/myapp"
env = { NODE_ENV = "production" }
# The server is ready when it accepts connections; to wait until a page
# answers 2xx as well:
# ready_path = "/healthz"

# One server for all the site's mod_fcgid processes (the default); false: one
# per process (needed for max_requests = N, which recycles it).
shared = true
start_timeout = 30
request_timeout = 30

[log]
target = "stderr"
level = "info"
