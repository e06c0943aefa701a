#!/home/USER/bin/fcgi-shim
# fcgi-shim settings for a Ruby on Rails application (or any Rack
# application: Sinatra, Hanami, a config.ru) under Puma, in the shebang
# form: put it in the web root as mysite.fcgi, chmod 755, and point the
# first line at the installed fcgi-shim. Every key is described in the
# README's "Application kinds".
#
# The shim starts Puma on a private unix socket ("{socket}" below is
# replaced by its path) and relays every request to it over HTTP/1.1. Rails
# builds URLs from X-Forwarded-Proto and X-Forwarded-Host, which the shim
# sends. For a site in a subdirectory (/blog): strip_prefix = false, and
# mount the app at it in config.ru:
#   map "/blog" do run Rails.application end

# `touch mysite.fcgi` (or tmp/restart.txt, below) restarts the site: a new
# Puma is started and must accept connections before the old one stops.
# watch = ["/home/USER/myapp/tmp/restart.txt"]

[app]
kind = "http"
# bundle exec puma from the application's directory. One Puma serves all the
# site's mod_fcgid processes (shared, below): its threads (-t) are how many
# requests it serves at once; add -w 2 for two processes on two cores.
command = ["/usr/local/bin/bundle", "exec", "puma", "-e", "production", "-t", "1:5", "-b", "unix://{socket}"]
workdir = "/home/USER/myapp"
env = { RAILS_ENV = "production", RAILS_LOG_TO_STDOUT = "1", SECRET_KEY_BASE = "change-me" }
# Rails boots slowly; a page that answers 2xx once it has:
# ready_path = "/up"

# One server for all the site's processes; false: one Puma per process.
shared = true
start_timeout = 60
request_timeout = 30

[log]
target = "stderr"
level = "info"
