#!/home/USER/bin/fcgi-shim
# fcgi-shim settings for PHP through php-cgi (kind = "fastcgi"), in the
# shebang form: put it in the web root as mysite.fcgi, chmod 755, and point
# the first line at the installed fcgi-shim. Every key is described in the
# README's "Application kinds".
#
# The shim starts php-cgi the way mod_fcgid does (a listening socket on fd 0)
# and relays each FastCGI request to it. Every URL the .htaccess hands to
# mysite.fcgi runs the front controller below (Laravel's public/index.php,
# WordPress's index.php, Symfony's public/index.php); the original URL is in
# REQUEST_URI. The shim runs php-cgi with PHP_FCGI_CHILDREN=0 (one process,
# no forked children: mod_fcgid starts more shims under load) and
# PHP_FCGI_MAX_REQUESTS=0 (use max_requests below to recycle it).

# `touch mysite.fcgi` starts a fresh php-cgi (opcache and php.ini changes
# take effect). PHP files themselves are read anew on every request.

[app]
kind = "fastcgi"
command = ["/usr/bin/php-cgi"]
# FastCGI params set on every request: the script php-cgi runs.
params = { SCRIPT_FILENAME = "/home/USER/myapp/index.php" }
workdir = "/home/USER/myapp"
# php.ini settings can go in an ini file: command = ["/usr/bin/php-cgi", "-c", "/home/USER/php.ini"]
# env = { APP_ENV = "production" }

max_requests = 500
start_timeout = 30
request_timeout = 30

[log]
target = "stderr"
level = "info"
