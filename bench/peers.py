#!/usr/bin/env python3
"""`make bench`, the benchmark of record: one WSGI application
(bench/peers_app.py) served by fcgi-shim and by the usual ways to run Python
behind Apache, measured side by side with wrk in one run.

Setups, each its own private Apache 2.4 (the end-to-end tests' template,
tests/apache_support/httpd.conf.in: mpm_event, KeepAlive On here) on a free
loopback port, each with the same number of application processes P
(--procs, default 8), each with its own copy of the application:

  shim       mod_fcgid + htaccess-examples/mod_fcgid.htaccess as shipped;
             mysite.fcgi = a copy of target/release/fcgi-shim, mysite.toml
             [app] kind = "wsgi" (default settings otherwise), [log] level =
             "warn"; FcgidMaxProcessesPerClass P
  shim-inmem the shim's setup with FcgidMaxRequestInMem 4 MiB in the server
             config (the post workload only): mod_fcgid's default (64 KiB)
             writes any larger request body to a temporary file and reads it
             back before the application gets a byte; a host's owner can
             raise it (server config only, not .htaccess)
  flup       the same, mysite.fcgi = a Python script running
             flup.server.fcgi.WSGIServer(application).run()
  cfloor     the same, mysite.fcgi = the C libfcgi responder
             (bench/hello-libfcgi.c; the hello workload only): the floor of
             any FastCGI application's cost behind this Apache
  modwsgi    mod_wsgi (Debian's libapache2-mod-wsgi-py3) daemon mode:
             WSGIDaemonProcess processes=P threads=1 python-home=<venv>,
             WSGIScriptAlias /, AllowOverride None
  passenger  mod_passenger (Debian's libapache2-mod-passenger): PassengerAppType
             wsgi, passenger_wsgi.py, PassengerMaxPoolSize = PassengerMinInstances = P
  uwsgi      uwsgi --plugin python3 --fastcgi-socket 127.0.0.1:PORT --processes P
             --master --virtualenv <venv> behind mod_proxy_fcgi (ProxyPass
             fcgi://; SCRIPT_NAME and PATH_INFO set with ProxyFCGISetEnvIf)
  gunicorn   gunicorn -w P -k sync behind mod_proxy_http

All application processes run as www-data. mod_fcgid keeps its processes for
the whole run (FcgidIdleTimeout 3600, FcgidProcessLifeTime 7200).

Workloads (paths of bench/peers_app.py):
  hello    /hello: bench/hello.py
  django   /django/: the Django project bench/djbench (DEBUG off): one ORM
           query of 20 rows from a SQLite file made at start, one template render
  big      /big: a 1 MiB response
  post     /echo: a 1 MiB POST (a wrk Lua script); the application reads
           wsgi.input fully and answers the number of bytes it read

For each workload every setup is checked (the right answer) and warmed up
(wrk with 2P connections until its P processes run), then for each
concurrency (--connections, default "1 4 8"; wrk -t1 for one connection,
-t2 otherwise) --rounds rounds (default 4) of --seconds (default 3) per setup,
the setups' order rotating each round, so load from anything else on the
machine falls on all of them. Reported: medians of req/s, p50 and p99 (wrk's,
corrected for coordinated omission), the requests Apache's access log shows
taking 0.5 s or more, and the ratio shim/setup as the median of the
per-round ratios (with their range). After the hello rounds: RSS and PSS (/proc/PID/smaps_rollup) of each
setup's application processes (for the shim, each fcgi-shim process and its
Python worker). At the end: touch-to-new-code for the shim (its own Apache,
one mod_fcgid process: bench/touch.py's site, whose module answers its version
and imports in no time; from `touch mysite.fcgi` after rewriting the module
to the first response with the new version; --touch-reps times, median).

A setup whose module or program is missing is skipped with a line saying what
to install. --write appends the Markdown tables, with the date, commit,
command line, nproc and load averages, to bench/results.md.

Standard library only; run with the test virtualenv's Python (Django, flup,
gunicorn; make bench does), as root (Apache's children run as www-data):
  bench/peers.py [--rounds 4] [--seconds 3] [--connections "1 4 8"] [--procs 8]
                 [--setups "shim flup cfloor modwsgi passenger uwsgi gunicorn"]
                 [--workloads "hello django big post"] [--touch-reps 5] [--write]
                 [--shim-before BIN]
--shim-before adds the setup "before": the shim's setup with another build,
so that a change is measured against the build before it in the same rounds.
A quick run: bench/peers.py --rounds 2 --seconds 2 --connections 4 --workloads hello
BENCH_KEEP_TMP=1 keeps the temp dir (every setup's logs); BENCH_HOLD=SECONDS keeps the
warmed-up setups of each workload up that long before its rounds (for strace,
perf or a CPU split; it prints their URLs).
"""

import argparse
import datetime
import http.client
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from apache_bench import (APACHE, MODULES, PASSENGER, PASSENGER_ROOT, REPO, argv, children,
                          descendants, free_port, kill_leftovers, memory_kib, passenger_conf,
                          passenger_version, processes_running, proxy_http_conf, say,
                          start_apache, stop_apache, tail, wait_for_port, write, wrk)

SETUPS = ["shim", "shim-inmem", "flup", "cfloor", "modwsgi", "passenger", "uwsgi", "gunicorn"]
MIB = 1 << 20
UWSGI = "/usr/bin/uwsgi"
UWSGI_PYTHON3 = "/usr/lib/uwsgi/plugins/python3_plugin.so"
MOD_WSGI = MODULES + "/mod_wsgi.so"
C_RESPONDER = os.path.join(REPO, "target/bench/hello-libfcgi")
POST_LUA = """wrk.method = "POST"
wrk.body = string.rep("x", %d)
wrk.headers["Content-Type"] = "application/octet-stream"
""" % MIB


class Interrupted(BaseException):
    """SIGINT or SIGTERM: the finally blocks stop every setup."""


def on_signal(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


class Workload:
    def __init__(self, name, path, what, expect, post=False):
        self.name, self.path, self.what, self.expect, self.post = name, path, what, expect, post

    def check(self, body):
        """True if `body` is this workload's right answer."""
        return self.expect(body)


WORKLOADS = {w.name: w for w in (
    Workload("hello", "/hello", "hello world (bench/hello.py)", lambda b: b == b"Hello, world!\n"),
    Workload("django", "/django/", "Django: an ORM query of 20 rows (SQLite) + a template render",
             lambda b: b"<h1>20 items</h1>" in b),
    Workload("big", "/big", "a 1 MiB response", lambda b: len(b) == MIB),
    Workload("post", "/echo", "a 1 MiB POST; the application reads it all and answers its length",
             lambda b: b.strip() == b"%d" % MIB, post=True),
)}


def request(port, workload, timeout=30):
    """(status, body) of one request of `workload`; (None, error text) on a connection error."""
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        if workload.post:
            conn.request("POST", workload.path, body=b"x" * MIB,
                         headers={"Content-Type": "application/octet-stream"})
        else:
            conn.request("GET", workload.path)
        resp = conn.getresponse()
        status, body = resp.status, resp.read()
        conn.close()
        return status, body
    except (OSError, http.client.HTTPException) as e:
        return None, str(e).encode()


def run(cmd):
    """stdout of a command, stripped ("" if it fails)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


class Context:
    """What every setup shares: the temp dir, the Python, P, the source of the application."""

    def __init__(self, tmp, python, procs, shim, c_responder):
        self.tmp, self.python, self.procs = tmp, python, procs
        self.shim, self.c_responder = shim, c_responder
        self.shim_before = ""
        self.venv = run([python, "-c", "import sys; print(sys.prefix)"])
        self.app_src = os.path.join(tmp, "app-src")
        self.as_root = os.geteuid() == 0

    def has_module(self, module):
        return subprocess.run([self.python, "-c", "import " + module],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL).returncode == 0


class Setup:
    """One private Apache (and maybe a backend) serving a copy of the application."""
    workloads = ("hello", "django", "big", "post")
    defines = ("FCGI_SHIM_NO_FCGID",)
    counted = "the application processes"

    def __init__(self, name, ctx):
        self.name, self.ctx = name, ctx
        self.root = os.path.join(ctx.tmp, name)
        self.app = os.path.join(self.root, "app")
        self.www = os.path.join(self.root, "www")
        self.state = os.path.join(self.root, "apache")
        self.apache = self.backend = None
        self.port = None

    def missing(self):
        """Why this setup cannot run here (with what to install), or None."""
        return None

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def prepare(self):
        os.makedirs(self.root, mode=0o755)
        os.chmod(self.root, 0o755)
        shutil.copytree(self.ctx.app_src, self.app)
        os.makedirs(self.www, mode=0o755, exist_ok=True)
        self.prepare_files()
        if self.ctx.as_root:
            subprocess.run(["chown", "-R", "www-data:www-data", self.app, self.www], check=True)

    def prepare_files(self):
        pass

    def apache_conf(self):
        raise NotImplementedError

    def start_backend(self):
        pass

    def start(self):
        self.prepare()
        self.start_backend()
        self.port = free_port()
        self.apache = start_apache(self.state, self.www, self.port,
                                   "KeepAlive On\n" + self.apache_conf(), defines=self.defines)

    def slots(self):
        """Pids of the processes that each serve one request at a time."""
        raise NotImplementedError

    def app_processes(self):
        """Pids whose memory is counted: the slots and their helpers."""
        return self.slots()

    def logs(self):
        return [self.state + "/error.log", self.state + "/stderr.log"]

    def access_log_size(self):
        try:
            return os.path.getsize(self.state + "/access.log")
        except OSError:
            return 0

    def slow_requests(self, since):
        """Requests logged after byte `since` of Apache's access log that took
        0.5 s or more (its format ends with %Dus)."""
        slow = 0
        try:
            with open(self.state + "/access.log", errors="replace") as f:
                f.seek(since)
                for line in f:
                    m = re.search(r" (\d+)us$", line)
                    if m and int(m.group(1)) >= 500000:
                        slow += 1
        except OSError:
            pass
        return slow

    def stop(self):
        stop_apache(self.apache)
        self.apache = None
        if self.backend is not None and self.backend.poll() is None:
            os.killpg(self.backend.pid, signal.SIGTERM)
            try:
                self.backend.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.backend.pid, signal.SIGKILL)
                self.backend.wait()


class FcgidSetup(Setup):
    """mod_fcgid with the shipped .htaccess; mysite.fcgi written by the subclass."""
    defines = ()
    counted = "the mod_fcgid processes (mysite.fcgi)"

    def missing(self):
        if not os.path.exists(MODULES + "/mod_fcgid.so"):
            return "%s/mod_fcgid.so missing (apt-get install -y libapache2-mod-fcgid)" % MODULES
        return None

    def prepare_files(self):
        shutil.copy(os.path.join(REPO, "htaccess-examples/mod_fcgid.htaccess"), self.www + "/.htaccess")
        os.chmod(self.www + "/.htaccess", 0o644)
        self.write_program(self.www + "/mysite.fcgi")

    def apache_conf(self):
        return ("FcgidMaxProcessesPerClass %d\nFcgidIdleTimeout 3600\nFcgidProcessLifeTime 7200\n"
                % self.ctx.procs)

    def slots(self):
        return processes_running(self.www + "/mysite.fcgi")


class Shim(FcgidSetup):
    counted = "each fcgi-shim process + its Python worker"

    def missing(self):
        if not os.path.exists(self.binary()):
            return "%s missing (cargo build --release)" % self.binary()
        return super().missing()

    def binary(self):
        return self.ctx.shim

    def write_program(self, path):
        shutil.copy(self.binary(), path)
        os.chmod(path, 0o755)
        write(self.www + "/mysite.toml",
              '[app]\nkind = "wsgi"\nmodule = "peers_app"\npython = "%s"\npython_path = ["%s"]\n'
              '[log]\nlevel = "warn"\n' % (self.ctx.python, self.app), 0o644)

    def app_processes(self):
        return [p for shim in self.slots() for p in [shim] + descendants(shim)]


class Flup(FcgidSetup):
    counted = "the flup processes (threaded WSGIServer)"

    def missing(self):
        if not self.ctx.has_module("flup.server.fcgi"):
            return "%s has no flup (pip install flup; scripts/test-venv.sh has it)" % self.ctx.python
        return super().missing()

    def write_program(self, path):
        write(path, "#!%s\n# flup's WSGIServer, as in Django's old runfastcgi guide.\n"
              "import sys\nsys.path.insert(0, %r)\n"
              "from peers_app import application\n"
              "from flup.server.fcgi import WSGIServer\n"
              "WSGIServer(application).run()\n" % (self.ctx.python, self.app), 0o755)


class CFloor(FcgidSetup):
    workloads = ("hello",)
    counted = "the C responders"

    def missing(self):
        if not os.path.exists(self.ctx.c_responder):
            return ("%s missing (apt-get install -y libfcgi-dev; gcc -O2 -o %s bench/hello-libfcgi.c "
                    "-lfcgi; make bench does)" % (self.ctx.c_responder, self.ctx.c_responder))
        return super().missing()

    def write_program(self, path):
        shutil.copy(self.ctx.c_responder, path)
        os.chmod(path, 0o755)


class ModWsgi(Setup):
    counted = "the mod_wsgi daemon processes"

    def missing(self):
        if not os.path.exists(MOD_WSGI):
            return "%s missing (apt-get install -y libapache2-mod-wsgi-py3)" % MOD_WSGI
        return None

    def apache_conf(self):
        return """LoadModule wsgi_module %(mod)s
WSGISocketPrefix "%(state)s/run/wsgi"
WSGIDaemonProcess peers processes=%(n)d threads=1 python-home=%(venv)s python-path=%(app)s home=%(app)s display-name=%%{GROUP}
WSGIProcessGroup peers
WSGIApplicationGroup %%{GLOBAL}
WSGIScriptAlias / "%(app)s/peers_app.py"
<Directory "%(app)s">
    AllowOverride None
    Require all granted
</Directory>
<Directory "%(www)s">
    AllowOverride None
</Directory>
""" % {"mod": MOD_WSGI, "state": self.state, "n": self.ctx.procs, "venv": self.ctx.venv,
       "app": self.app, "www": self.www}

    def slots(self):
        if self.apache is None:
            return []
        return [p for p in children(self.apache.pid) if (argv(p) or [""])[0].startswith("(wsgi:")]


class Passenger(Setup):
    counted = "the Python application processes (not Passenger's core and watchdog)"

    def missing(self):
        for path in (PASSENGER, PASSENGER_ROOT):
            if not os.path.exists(path):
                return "%s missing (apt-get install -y libapache2-mod-passenger)" % path
        return None

    def __init__(self, name, ctx):
        super().__init__(name, ctx)
        self.www = os.path.join(self.app, "public")

    def prepare_files(self):
        write(self.app + "/passenger_wsgi.py",
              "import os, sys\nsys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))\n"
              "from peers_app import application  # noqa: E402,F401\n", 0o644)

    def apache_conf(self):
        return passenger_conf(self.state, self.app, self.ctx.procs,
                              "PassengerAppType wsgi\nPassengerStartupFile passenger_wsgi.py\n"
                              "PassengerPython \"%s\"\n" % self.ctx.python)

    def slots(self):
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    if os.readlink("/proc/%s/cwd" % name) == self.app:
                        found.append(int(name))
                except OSError:
                    pass
        return found

    def logs(self):
        return super().logs() + [self.state + "/passenger.log"]


class Backend(Setup):
    """A server of its own on a loopback port, Apache proxying to it."""
    counted = "the master process + its workers"

    def backend_command(self, port):
        raise NotImplementedError

    def start_backend(self):
        self.backend_port = free_port()
        self.backend = subprocess.Popen(
            self.backend_command(self.backend_port), cwd=self.app, stdin=subprocess.DEVNULL,
            stdout=open(self.root + "/backend.log", "w"), stderr=subprocess.STDOUT,
            start_new_session=True)
        if not wait_for_port(self.backend_port, self.backend, 30):
            raise RuntimeError("%s did not listen on 127.0.0.1:%d" % (self.name, self.backend_port))

    def slots(self):
        if self.backend is None or self.backend.poll() is not None:
            return []
        return children(self.backend.pid)

    def app_processes(self):
        return [self.backend.pid] + self.slots() if self.slots() else []

    def logs(self):
        return super().logs() + [self.root + "/backend.log"]


class Uwsgi(Backend):
    def missing(self):
        for path, package in ((UWSGI, "uwsgi-core"), (UWSGI_PYTHON3, "uwsgi-plugin-python3"),
                              (MODULES + "/mod_proxy_fcgi.so", "apache2")):
            if not os.path.exists(path):
                return "%s missing (apt-get install -y %s)" % (path, package)
        return None

    def backend_command(self, port):
        cmd = [UWSGI, "--plugin", "python3", "--fastcgi-socket", "127.0.0.1:%d" % port,
               "--processes", str(self.ctx.procs), "--master", "--virtualenv", self.ctx.venv,
               "--chdir", self.app, "--module", "peers_app:application", "--need-app",
               "--die-on-term", "--disable-logging"]
        return cmd + (["--uid", "www-data", "--gid", "www-data"] if self.ctx.as_root else [])

    def apache_conf(self):
        # mod_proxy_fcgi sends SCRIPT_NAME = the whole path and no PATH_INFO;
        # the application is mounted at /, as for every other setup.
        return """LoadModule proxy_module %(m)s/mod_proxy.so
LoadModule proxy_fcgi_module %(m)s/mod_proxy_fcgi.so
ProxyPass "/" "fcgi://127.0.0.1:%(p)d/"
ProxyFCGISetEnvIf "true" SCRIPT_NAME ""
ProxyFCGISetEnvIf "reqenv('REQUEST_URI') =~ m#^([^?]*)#" PATH_INFO "$1"
""" % {"m": MODULES, "p": self.backend_port}


class Gunicorn(Backend):
    def missing(self):
        if not self.ctx.has_module("gunicorn"):
            return "%s has no gunicorn (pip install gunicorn; scripts/test-venv.sh has it)" % self.ctx.python
        if not os.path.exists(MODULES + "/mod_proxy_http.so"):
            return "%s/mod_proxy_http.so missing (apt-get install -y apache2)" % MODULES
        return None

    def backend_command(self, port):
        cmd = [self.ctx.python, "-m", "gunicorn", "-w", str(self.ctx.procs), "-k", "sync",
               "-b", "127.0.0.1:%d" % port, "--chdir", self.app]
        return cmd + (["--user", "www-data", "--group", "www-data"] if self.ctx.as_root else []) + [
            "peers_app:application"]

    def apache_conf(self):
        return proxy_http_conf(self.backend_port)


class ShimInMem(Shim):
    """The shim with mod_fcgid's request buffer raised: uploads without the temporary file."""
    workloads = ("post",)
    counted = "each fcgi-shim process + its Python worker (FcgidMaxRequestInMem 4 MiB)"

    def apache_conf(self):
        return super().apache_conf() + "FcgidMaxRequestInMem %d\n" % IN_MEM


IN_MEM = 4 << 20


class ShimBefore(Shim):
    """The same as shim with another build (--shim-before): a change measured in one run."""
    counted = "each fcgi-shim process (the build before) + its Python worker"

    def binary(self):
        return self.ctx.shim_before


KINDS = {"shim": Shim, "shim-inmem": ShimInMem, "before": ShimBefore, "flup": Flup, "cfloor": CFloor,
         "modwsgi": ModWsgi,
         "passenger": Passenger, "uwsgi": Uwsgi, "gunicorn": Gunicorn}


def make_app_source(ctx, with_django):
    """tmp/app-src: hello.py, peers_app.py and (with Django) djbench/ with its filled SQLite file."""
    os.makedirs(ctx.app_src, mode=0o755)
    for name in ("hello.py", "peers_app.py"):
        shutil.copy(os.path.join(REPO, "bench", name), ctx.app_src)
    if with_django:
        shutil.copytree(os.path.join(REPO, "bench/djbench"), ctx.app_src + "/djbench",
                        ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3"))
        subprocess.run([ctx.python, "-m", "djbench.filldb"], cwd=ctx.app_src, check=True,
                       env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    os.makedirs(ctx.app_src + "/imported", mode=0o755)
    subprocess.run(["chmod", "-R", "a+rX", ctx.app_src], check=True)


def warm_up(setup, workload, first, procs):
    """Checks the answer (retrying while the setup starts), then wrk with 2P
    connections: until P slots run the first time, until P processes imported
    Django for the django workload, once otherwise. Returns None, or why the
    setup cannot do this workload."""
    deadline = time.monotonic() + 60
    while True:
        status, body = request(setup.port, workload)
        if status == 200 and workload.check(body):
            break
        if time.monotonic() > deadline:
            return "%s %s answers %s: %r" % (workload.path, "POST" if workload.post else "GET",
                                             status, body[:200])
        time.sleep(0.5)
    script = setup.ctx.tmp + "/post.lua" if workload.post else None
    for _ in range(10 if first or workload.name == "django" else 1):
        try:
            wrk(setup.url(workload.path), 2, 2 * procs, script)
        except (RuntimeError, subprocess.SubprocessError) as e:
            return "wrk failed during the warm-up: %s" % str(e).split("\n")[0]
        if (not first or len(setup.slots()) >= procs) and (
                workload.name != "django" or len(django_imported(setup)) >= procs):
            break
    if first:
        say("%s: %d processes serving" % (setup.name, len(setup.slots())))
    if workload.name == "django":
        say("%s: Django imported in %d processes" % (setup.name, len(django_imported(setup))))
    return None


def django_imported(setup):
    """The setup's live application processes that imported Django (peers_app.py marks them)."""
    marked = {int(name) for name in os.listdir(setup.app + "/imported")}
    return [pid for pid in setup.app_processes() if pid in marked]


def measure_memory(setup):
    pids = setup.app_processes()
    rss = pss = 0
    for pid in pids:
        r, p = memory_kib(pid)
        rss, pss = rss + r, pss + p
    return {"what": setup.counted, "processes": len(pids), "slots": len(setup.slots()),
            "rss": rss, "pss": pss}


def touch_to_new_code(ctx, reps):
    """Seconds from `touch mysite.fcgi` to the new version's first response,
    one per repetition (None: never within 30 s), with bench/touch.py's site."""
    import touch  # beside this file
    root = os.path.join(ctx.tmp, "touch")
    for d in (root, root + "/www", root + "/apps"):
        os.makedirs(d, mode=0o755)
        os.chmod(d, 0o755)
    site = touch.Site(root, "shim", ctx.shim, ctx.python, 0.0, False)
    apache, port = None, None
    try:
        apache, port = touch.apache_for(root, root + "/www", 1)
        touch.warm(port, site, 1)
        times = []
        for i in range(reps):
            first_new, _slowest, _imports = touch.one_touch(port, site, 1)
            times.append(first_new)
            say("touch %d: %s" % (i + 1, "%.3f s" % first_new if first_new is not None else "never"))
        return times
    finally:
        stop_apache(apache)


def versions(ctx):
    py = ctx.python

    def dist(name):
        return run([py, "-c", "import importlib.metadata as m; print(m.version(%r))" % name]) or "-"

    def deb(package):
        return run(["dpkg-query", "-W", "-f=${Version}", package]) or "-"

    return ("Apache %s (mpm_event), mod_fcgid %s, %s, Django %s, flup %s, mod_wsgi %s, Passenger %s, "
            "uWSGI %s, gunicorn %s" % (
                run([APACHE, "-v"]).split("\n")[0].split("/")[-1], deb("libapache2-mod-fcgid"),
                run([py, "--version"]), dist("Django"), dist("flup"), deb("libapache2-mod-wsgi-py3"),
                passenger_version(), run([UWSGI, "--version"]) or "-", dist("gunicorn")))


def load_average():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def errors_of(res):
    """non-2xx responses + socket errors of one wrk run."""
    socket_errors = sum(int(x) for x in res["socket_errors"].replace(",", " ").split() if x.isdigit())
    return res["bad"] + socket_errors


def cell_table(runs, setups, shim_name="shim"):
    """Markdown rows for one workload and concurrency: runs[setup] = per-round results (None: failed)."""
    lines = ["| setup | req/s | p50 ms | p99 ms | shim/setup req/s (range) | errors | >= 0.5 s |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    ratios_by_setup = {}
    for name in setups:
        rows = [r for r in runs[name] if r is not None]
        if not rows:
            lines.append("| %s | failed | | | | | |" % name)
            continue
        med = {k: statistics.median(r[k] for r in rows) for k in ("rps", "p50", "p99")}
        ratio = ""
        if name != shim_name and shim_name in runs:
            pairs = [a["rps"] / b["rps"] for a, b in zip(runs[shim_name], runs[name])
                     if a is not None and b is not None and b["rps"] > 0]
            if pairs:
                ratios_by_setup[name] = statistics.median(pairs)
                ratio = "%.2fx (%.2f–%.2f)" % (ratios_by_setup[name], min(pairs), max(pairs))
        elif name == shim_name:
            ratio = "1"
        failed = len(runs[name]) - len(rows)
        lines.append("| %s | %.0f | %.2f | %.2f | %s | %d%s | %d |" % (
            name, med["rps"], med["p50"], med["p99"], ratio, sum(errors_of(r) for r in rows),
            " (+%d failed runs)" % failed if failed else "", sum(r["slow"] for r in rows)))
    return lines, ratios_by_setup


def ratio_table(title, ratios, cols):
    """Markdown: a row per setup of `ratios[setup][(workload, c)]`, a column per entry of `cols`."""
    lines = ["### " + title, "",
             "| setup | " + " | ".join("%s c=%d" % col for col in cols) + " |",
             "|---|" + "---:|" * len(cols)]
    for name in KINDS:
        if name in ratios:
            lines.append("| %s | " % name + " | ".join(
                "%.2fx" % ratios[name][col] if col in ratios[name] else "" for col in cols) + " |")
    return lines + [""]


def report(args, ctx, results, memory, touch_times, skipped, header):
    """The Markdown of the whole run."""
    out = header + [""]
    if skipped:
        out += ["Skipped: " + "; ".join("%s: %s" % kv for kv in skipped.items()) + ".", ""]
    summary = {}
    for (workload, c), runs in results.items():
        names = [n for n in KINDS if n in runs]
        out.append("### %s, c=%d (wrk -t%d -c%d -d%ds, %d round%s)" % (
            WORKLOADS[workload].what, c, min(2, c), c, args.seconds, args.rounds,
            "s" if args.rounds > 1 else ""))
        out.append("")
        lines, ratios = cell_table(runs, names)
        out += lines + [""]
        for name, ratio in ratios.items():
            summary.setdefault(name, {})[(workload, c)] = ratio
    inmem = {}
    for (workload, c), runs in results.items():
        if "shim-inmem" in runs:
            _, ratios = cell_table(runs, [n for n in KINDS if n in runs], shim_name="shim-inmem")
            for name, ratio in ratios.items():
                inmem.setdefault(name, {})[(workload, c)] = ratio
    if summary:
        out += ratio_table("Summary: shim/setup req/s (median of the per-round ratios)",
                           summary, list(results))
    if inmem:
        out += ratio_table("shim-inmem/setup req/s (FcgidMaxRequestInMem %d for the shim; median of "
                           "the per-round ratios)" % IN_MEM, inmem,
                           [col for col in results if "shim-inmem" in results[col]])
    if memory:
        out.append("### Memory after the hello rounds (P = %d slots: a slot serves one request at a time)"
                   % args.procs)
        out.append("")
        out.append("| setup | counted | processes | RSS MiB | PSS MiB | RSS MiB/slot | PSS MiB/slot |")
        out.append("|---|---|---:|---:|---:|---:|---:|")
        for name in KINDS:
            if name in memory:
                m = memory[name]
                slots = m["slots"] or 1
                out.append("| %s | %s | %d | %.1f | %.1f | %.1f | %.1f |" % (
                    name, m["what"], m["processes"], m["rss"] / 1024, m["pss"] / 1024,
                    m["rss"] / 1024 / slots, m["pss"] / 1024 / slots))
        out.append("")
    if touch_times:
        live = [t for t in touch_times if t is not None]
        out.append("### touch-to-new-code, shim (hello-sized module, 1 mod_fcgid process)")
        out.append("")
        if live:
            out.append("median %.3f s over %d touches (min %.3f, max %.3f)%s" % (
                statistics.median(live), len(live), min(live), max(live),
                "; %d never showed the new version within 30 s" % (len(touch_times) - len(live))
                if len(live) < len(touch_times) else ""))
        else:
            out.append("no touch showed the new version within 30 s")
        out.append("")
    return out


def estimate_seconds(args, setups, workloads):
    runs = sum(len([s for s in setups if w in KINDS[s].workloads]) for w in workloads) * len(args.connections)
    warm = sum(len([s for s in setups if w in KINDS[s].workloads]) for w in workloads) * 3
    return runs * args.rounds * (args.seconds + 0.5) + warm + 15 * len(setups) + 3 * args.touch_reps + 10


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", default="1 4 8", help='wrk connections, e.g. "1 4 8"')
    ap.add_argument("--procs", type=int, default=8, help="application processes per setup (P)")
    ap.add_argument("--setups", default=" ".join(SETUPS))
    ap.add_argument("--workloads", default=" ".join(WORKLOADS))
    ap.add_argument("--touch-reps", type=int, default=5, help="touch-to-new-code repetitions (0: none)")
    ap.add_argument("--python", default=sys.executable,
                    help="the applications' Python (default: this one; a virtualenv with Django, flup, gunicorn)")
    ap.add_argument("--shim", default=os.path.join(REPO, "target/release/fcgi-shim"))
    ap.add_argument("--c-responder", default=C_RESPONDER)
    ap.add_argument("--shim-before", default="",
                    help="also measure this fcgi-shim build as the setup 'before' (e.g. one of "
                    "the commit before a change, built in a git worktree)")
    ap.add_argument("--write", action="store_true", help="append the tables to bench/results.md")
    args = ap.parse_args()
    args.connections = [int(c) for c in args.connections.replace(",", " ").split()]
    setup_names = args.setups.replace(",", " ").split()
    if args.shim_before and "before" not in setup_names:
        setup_names.insert(1, "before")
    workload_names = args.workloads.replace(",", " ").split()
    for name in setup_names:
        if name not in KINDS:
            ap.error("unknown setup %r (known: %s)" % (name, " ".join(SETUPS)))
    for name in workload_names:
        if name not in WORKLOADS:
            ap.error("unknown workload %r (known: %s)" % (name, " ".join(WORKLOADS)))
    if args.rounds < 1 or args.seconds < 1 or not args.connections:
        ap.error("--rounds, --seconds and --connections must be positive")
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing: apt-get install -y wrk")
    if os.geteuid() != 0:
        say("not root: Apache and the applications run as you; www-data cannot be used")

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    command = shlex.join([os.path.relpath(os.path.abspath(sys.argv[0]), REPO)] + sys.argv[1:])
    load_before = load_average()
    started = datetime.datetime.now(datetime.timezone.utc)
    tmp = tempfile.mkdtemp(prefix="fcgi-shim-peers.")
    os.chmod(tmp, 0o755)
    ctx = Context(tmp, os.path.abspath(args.python), args.procs, os.path.abspath(args.shim),
                  os.path.abspath(args.c_responder))
    ctx.shim_before = os.path.abspath(args.shim_before) if args.shim_before else ""
    setups, skipped = [], {}
    results, memory, touch_times = {}, {}, []
    code = 0
    try:
        if "django" in workload_names and not ctx.has_module("django"):
            why = "%s has no Django (scripts/test-venv.sh has it)" % ctx.python
            print("django: workload skipped: " + why, flush=True)
            skipped["the django workload"] = why
            workload_names.remove("django")
        for name in setup_names:
            setup = KINDS[name](name, ctx)
            why = setup.missing()
            if why:
                print("%s: skipped: %s" % (name, why), flush=True)
                skipped[name] = why
            else:
                setups.append(setup)
        names = [s.name for s in setups]
        est = estimate_seconds(args, names, workload_names)
        say("setups %s; workloads %s; c = %s; %d rounds of %d s; P = %d; estimate: about %d min" % (
            " ".join(names), " ".join(workload_names), " ".join(map(str, args.connections)),
            args.rounds, args.seconds, args.procs, round(est / 60)))
        write(tmp + "/post.lua", POST_LUA, 0o644)
        make_app_source(ctx, "django" in workload_names)

        for setup in list(setups):
            try:
                setup.start()
                say("%s: Apache on 127.0.0.1:%d" % (setup.name, setup.port))
            except (SystemExit, RuntimeError, OSError, subprocess.SubprocessError) as e:
                print("%s: skipped: did not start: %s" % (setup.name, str(e).split("\n")[0]), flush=True)
                for log in setup.logs():
                    print(tail(log), file=sys.stderr)
                skipped[setup.name] = "did not start"
                setup.stop()
                setups.remove(setup)

        warmed = set()
        for wname in workload_names:
            workload = WORKLOADS[wname]
            active = []
            for setup in setups:
                if wname not in setup.workloads:
                    continue
                why = warm_up(setup, workload, setup.name not in warmed, args.procs)
                warmed.add(setup.name)
                if why:
                    print("%s: %s skipped: %s" % (setup.name, wname, why), flush=True)
                    for log in setup.logs():
                        print(tail(log), file=sys.stderr)
                    skipped["%s/%s" % (setup.name, wname)] = "wrong answer"
                else:
                    active.append(setup)
            script = tmp + "/post.lua" if workload.post else None
            if os.environ.get("BENCH_HOLD") and active:
                # For profiling: the warmed-up setups stay up that long.
                say("holding for %s s: %s" % (os.environ["BENCH_HOLD"], " ".join(
                    "%s=%s" % (s.name, s.url(workload.path)) for s in active)))
                time.sleep(float(os.environ["BENCH_HOLD"]))
            for c in args.connections:
                runs = results[(wname, c)] = {s.name: [] for s in active}
                for r in range(args.rounds if active else 0):
                    # Rotate which goes first, so none always follows another.
                    for setup in active[r % len(active):] + active[:r % len(active)]:
                        mark = setup.access_log_size()
                        try:
                            res = wrk(setup.url(workload.path), args.seconds, c, script)
                            res["slow"] = setup.slow_requests(mark)
                        except (RuntimeError, subprocess.SubprocessError) as e:
                            say("%s %s c=%d round %d: wrk failed: %s" % (
                                wname, setup.name, c, r + 1, str(e).split("\n")[0]))
                            res = None
                        runs[setup.name].append(res)
                        if res:
                            say("%-6s c=%d round %d %-9s %8.0f req/s  p50 %6.2f ms  p99 %7.2f ms%s%s" % (
                                wname, c, r + 1, setup.name, res["rps"], res["p50"], res["p99"],
                                "  (errors: %d)" % errors_of(res) if errors_of(res) else "",
                                "  (>= 0.5 s: %d)" % res["slow"] if res["slow"] else ""))
            if wname == "hello":
                for setup in active:
                    memory[setup.name] = measure_memory(setup)
        for setup in setups:
            setup.stop()
        if args.touch_reps > 0 and "shim" in [s.name for s in setups]:
            try:
                touch_times = touch_to_new_code(ctx, args.touch_reps)
            except (SystemExit, RuntimeError, OSError) as e:
                print("touch-to-new-code: failed: %s" % str(e).split("\n")[0], flush=True)
    except Interrupted as e:
        print("bench: interrupted (%s); stopping every setup" % e, file=sys.stderr)
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for setup in setups:
            setup.stop()
        kill_leftovers(tmp)
        if os.environ.get("BENCH_KEEP_TMP"):
            say("kept %s" % tmp)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    if code:
        sys.exit(code)

    finished = datetime.datetime.now(datetime.timezone.utc)
    header = [
        "## `make bench` (bench/peers.py): %s" % " vs ".join(s.name for s in setups),
        "",
        "Run %s UTC (%d min), commit %s, `%s`, nproc %d, load average before %s, after %s." % (
            started.strftime("%Y-%m-%d %H:%M"), round((finished - started).total_seconds() / 60),
            run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"]) or "-", command,
            os.cpu_count(), load_before, load_average()),
        "%s. P = %d application processes per setup, each setup its own Apache (KeepAlive On); "
        "%d interleaved round(s) (the order rotates), medians; ratios: medians of the per-round ratios "
        "(min–max); p50 and p99 are wrk's, which corrects for coordinated omission (a request that "
        "stalls adds a sample for every request its connection would have sent meanwhile, so a few "
        "1 s stalls make a p99 of hundreds of ms); >= 0.5 s: the measured requests that took 0.5 s or "
        "more in Apache's access log (with c >= P, mod_fcgid at times finds no idle process and waits "
        "about 1 s for one); errors: non-2xx responses + socket errors. See bench/peers.py's docstring "
        "for the setups."
        % (versions(ctx), args.procs, args.rounds),
    ]
    markdown = "\n".join(report(args, ctx, results, memory, touch_times, skipped, header))
    print()
    print(markdown)
    if args.write:
        with open(os.path.join(REPO, "bench/results.md"), "a") as f:
            f.write("\n" + markdown)
        say("appended to bench/results.md")


if __name__ == "__main__":
    main()
