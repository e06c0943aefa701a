"""`make bench-touch`: what one `touch mysite.fcgi` costs, before and after a
change, behind the same private Apache + mod_fcgid.

The application takes --import-seconds (0.8) to import, as a Django project
does, appends its worker's pid to imports.log when it is imported, and
answers its version. For 1 and 4 mod_fcgid processes per site (one Apache per
count, FcgidMaxProcessesPerClass N, warmed up until N run), each build has its
own site (mysite.fcgi = that build, mysite.toml: kind = "wsgi"); a round
writes a new version of the application, touches mysite.fcgi and sends GETs
from N clients (each one at a time, all through the rewrite .htaccess) until
every client saw the new version. It prints, per build and process count:
  touch->new   from the touch to the first response with the new version
  slowest      the slowest response during the switch (touch until every
               client answered new, plus a second)
  imports      imports of the application per touch (imports.log)
as the median over the rounds (and the worst). --django adds, per build, a
site whose application imports the Django project of the tests
(tests/wsgi_apps/djsite) instead of sleeping, with `warmup = "/"` (its
index view), rows "-django".

Standard library only:
  bench/touch.py --before BIN [--after BIN] [--rounds 3] [--import-seconds 0.8]
                 [--python PYTHON] [--processes 1,4] [--django]
--after defaults to target/release/fcgi-shim; --python to this interpreter.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

APP = """import os, time
%(prelude)s
with open(%(log)r, "a") as f:
    f.write("%%d\\n" %% os.getpid())
VERSION = %(version)r


def application(environ, start_response):
    if environ.get("PATH_INFO") == "/" and django_application:
        return django_application(environ, start_response)
    body = ("VERSION=%%s\\n" %% VERSION).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
"""
# The sleeping application: an import that takes --import-seconds.
SLEEP = "time.sleep(%s)\ndjango_application = None"
# The Django project of the tests (tests/wsgi_apps/djsite, what
# `django-admin startproject` makes, plus a small app): its real import, and
# `warmup = "/"` so that its views are imported before it serves too.
DJANGO = "from djsite.wsgi import application as django_application"


from apache_bench import free_port, processes_running, say, start_apache, stop_apache, write  # noqa: E402  (beside this file)


def get(port, path, timeout=30):
    """(body, seconds) of GET path; body None on an error or a non-200."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(("GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n" % path).encode())
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None, time.monotonic() - t0
    head, _, body = data.partition(b"\r\n\r\n")
    ok = head.split(b" ", 2)[1:2] == [b"200"]
    return (body.decode(errors="replace").strip() if ok else None), time.monotonic() - t0


def shims(www_site):
    """Pids of the shims of one site (the processes running its mysite.fcgi)."""
    return processes_running(os.path.join(www_site, "mysite.fcgi"))


class Site:
    def __init__(self, root, name, binary, python, import_s, django):
        self.name, self.import_s = name, import_s
        self.prelude = DJANGO if django else SLEEP % import_s
        self.www = os.path.join(root, "www", name)
        self.app = os.path.join(root, "apps", name)
        for d in (self.www, self.app):
            os.makedirs(d, mode=0o755)
            os.chmod(d, 0o777 if d == self.app else 0o755)
        if django:
            shutil.copytree(os.path.join(REPO, "tests/wsgi_apps/djsite"), self.app + "/djsite")
            subprocess.run(["chmod", "-R", "a+rX", self.app + "/djsite"], check=True)
        self.log = os.path.join(self.app, "imports.log")
        write(self.log, "", 0o666)
        self.version = 0
        self.new_version()
        shutil.copy(binary, self.www + "/mysite.fcgi")
        os.chmod(self.www + "/mysite.fcgi", 0o755)
        write(self.www + "/.htaccess",
              open(os.path.join(REPO, "htaccess-examples/mod_fcgid.htaccess")).read(), 0o644)
        write(self.www + "/mysite.toml",
              '[app]\nkind = "wsgi"\nmodule = "slowapp"\npython = "%s"\npython_path = [%s]\n'
              'start_timeout = 20\nenv = { PYTHONDONTWRITEBYTECODE = "1" }\n%s'
              '[log]\nlevel = "info"\n' % (
                  python, ", ".join('"%s"' % p for p in [self.app] + [self.app + "/djsite"] * django),
                  'warmup = "/"\n' if django else ""), 0o644)

    def new_version(self):
        self.version += 1
        write(self.app + "/slowapp.py", APP % {
            "prelude": self.prelude, "log": self.log, "version": "v%d" % self.version}, 0o644)
        return "VERSION=v%d" % self.version

    def imports(self):
        with open(self.log) as f:
            return len(f.read().splitlines())


def apache_for(root, www, processes):
    state = os.path.join(root, "apache")
    for d in (state, state + "/run", state + "/fcgid-ipc"):
        os.makedirs(d, mode=0o755, exist_ok=True)
    port = free_port()
    extra = ("FcgidMaxProcessesPerClass %d\nFcgidMinProcessesPerClass 0\nFcgidIdleTimeout 600\n"
             "FcgidSpawnScoreUpLimit 100\nFcgidSpawnScore 1\nFcgidTerminationScore 0\n" % processes)
    return start_apache(state, www, port, extra), port


def warm(port, site, processes):
    """Parallel GETs until mod_fcgid runs `processes` shims for the site."""
    for _ in range(40):
        if len(shims(site.www)) >= processes:
            return
        threads = [threading.Thread(target=get, args=(port, "/%s/x" % site.name))
                   for _ in range(2 * processes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    say("%s: only %d of %d processes" % (site.name, len(shims(site.www)), processes))


def one_touch(port, site, clients):
    """Touch with a new version; (touch->new, slowest, imports)."""
    before = site.imports()
    new = site.new_version()
    lock = threading.Lock()
    first_new = [None]
    slowest = [0.0]
    done = [0]
    t0 = time.monotonic()
    os.utime(site.www + "/mysite.fcgi", None)

    def client():
        seen_new_at = None
        while True:
            body, took = get(port, "/%s/x" % site.name)
            now = time.monotonic()
            with lock:
                slowest[0] = max(slowest[0], took)
                if body == new and first_new[0] is None:
                    first_new[0] = now - t0
            if body == new and seen_new_at is None:
                seen_new_at = now
                with lock:
                    done[0] += 1
            # A second more after this client saw the new version, and
            # until every client did.
            with lock:
                all_new = done[0] == clients
            if seen_new_at and all_new and now - seen_new_at > 1.0:
                return
            if now - t0 > 30:
                return
            time.sleep(0.01)

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Late imports (a process that switched after the clients stopped).
    time.sleep(2 * site.import_s + 1)
    return first_new[0], slowest[0], site.imports() - before


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--before", required=True, help="the fcgi-shim build to compare with")
    ap.add_argument("--after", default=os.path.join(REPO, "target/release/fcgi-shim"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--import-seconds", type=float, default=0.8)
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--processes", default="1,4")
    ap.add_argument("--django", action="store_true",
                    help="also sites whose application imports the tests' Django project "
                         "(tests/wsgi_apps/djsite; the Python needs Django) with warmup = \"/\"")
    args = ap.parse_args()
    counts = [int(n) for n in args.processes.split(",")]

    rows = []
    for processes in counts:
        root = tempfile.mkdtemp(prefix="fcgi-shim-bench-touch.")
        os.chmod(root, 0o755)
        for d in ("www", "apps"):
            os.makedirs(os.path.join(root, d))
            os.chmod(os.path.join(root, d), 0o755)
        apps = [False, True] if args.django else [False]
        sites = [Site(root, label + ("-django" if django else ""), binary, args.python,
                      args.import_seconds, django)
                 for django in apps
                 for label, binary in (("before", args.before), ("after", args.after))]
        apache, port = apache_for(root, os.path.join(root, "www"), processes)
        try:
            for site in sites:
                warm(port, site, processes)
            results = {site.name: [] for site in sites}
            for r in range(args.rounds):
                for site in sites[r % len(sites):] + sites[:r % len(sites)]:
                    n = len(shims(site.www))
                    res = one_touch(port, site, processes)
                    results[site.name].append(res)
                    say("%d processes (%d running), round %d, %-6s touch->new %s s, slowest %.2f s, "
                        "%d imports" % (processes, n, r + 1, site.name,
                                        "%.2f" % res[0] if res[0] is not None else "never",
                                        res[1], res[2]))
            for site in sites:
                res = results[site.name]
                live = [x[0] for x in res if x[0] is not None]
                rows.append((processes, site.name,
                             statistics.median(live) if live else None, max(live) if live else None,
                             statistics.median([x[1] for x in res]), max(x[1] for x in res),
                             statistics.median([x[2] for x in res]), max(x[2] for x in res),
                             len(res) - len(live)))
        finally:
            stop_apache(apache)
            time.sleep(1)
            shutil.rmtree(root, ignore_errors=True)

    print("touch with a %.1f s import%s, %d rounds (median, worst):" % (
        args.import_seconds, " (and the Django project: -django)" if args.django else "", args.rounds))
    print("%-10s %-14s %-18s %-18s %-10s" % ("processes", "build", "touch->new s", "slowest s", "imports"))
    for processes, name, tn, tnw, sl, slw, im, imw, never in rows:
        tns = "%.2f (%.2f)" % (tn, tnw) if tn is not None else "never"
        print("%-10d %-14s %-18s %-18s %-10s%s" % (
            processes, name, tns, "%.2f (%.2f)" % (sl, slw), "%g (%d)" % (im, imw),
            "  %d round(s) never showed the new version" % never if never else ""))


if __name__ == "__main__":
    main()
