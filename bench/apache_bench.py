"""Helpers of the benchmarks in bench/ (standard library only): a private
Apache from the end-to-end tests' template (tests/apache_support/httpd.conf.in)
started and stopped, wrk runs parsed, the process table and processes' memory
read from /proc, and the Apache snippets of the peers (mod_passenger,
mod_proxy_http). Used by peers.py, wsgi-vs-flup.py, node-vs-peers.py and
touch.py; it measures nothing itself."""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APACHE = "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"
PASSENGER = MODULES + "/mod_passenger.so"
PASSENGER_ROOT = "/usr/lib/ruby/vendor_ruby/phusion_passenger/locations.ini"


def say(*args):
    print("bench:", *args, file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write(path, text, mode):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


def processes_under(needle):
    """pid -> cmdline of live processes whose command line or exe mentions needle."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open("/proc/%s/cmdline" % name, "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            try:
                exe = os.readlink("/proc/%s/exe" % name)
            except OSError:
                exe = ""
            with open("/proc/%s/stat" % name) as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and (needle in cmd or needle in exe):
            found[int(name)] = cmd
    return found


def argv(pid):
    """The command line of a process as a list ([] once it is gone)."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0")[:-1]]
    except OSError:
        return []


def processes_running(program):
    """Pids of the live processes running `program` (an absolute path) as
    their executable or as the script of their interpreter (argv[0] or
    argv[1]), except fcgi-shim's process-group guards (comm fcgi-shim-guard)
    and the keeper of a shared server (argv[1] keep-server): the FastCGI
    processes mod_fcgid started for a mysite.fcgi."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        args = argv(int(name))
        if program in args[:2] and args[1:2] != ["keep-server"]:
            try:
                with open("/proc/%s/comm" % name) as f:
                    if f.read().strip() == "fcgi-shim-guard":
                        continue
                with open("/proc/%s/stat" % name) as f:
                    if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                        continue
            except OSError:
                continue
            found.append(int(name))
    return found


def memory_kib(pid):
    """(RSS, PSS) of a process in KiB, from /proc/PID/smaps_rollup ((0, 0) once it is gone).
    PSS counts each shared page divided by the number of processes mapping it."""
    values = {"Rss:": 0, "Pss:": 0}
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                fields = line.split()
                if fields and fields[0] in values:
                    values[fields[0]] = int(fields[1])
    except OSError:
        pass
    return values["Rss:"], values["Pss:"]


def tail(path, lines=20):
    """The last `lines` lines of a log file, indented, or a note that it is missing."""
    try:
        with open(path, errors="replace") as f:
            text = f.read().splitlines()[-lines:]
    except OSError as e:
        return "    (%s: %s)" % (path, e.strerror)
    return "    ==> %s <==\n%s" % (path, "\n".join("    " + line for line in text))


def rss_kib(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def children(pid):
    kids = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open("/proc/%s/stat" % name) as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        kids.append(int(name))
            except OSError:
                pass
    return kids


def descendants(pid):
    """Pids of the children of `pid`, their children, and so on."""
    found, todo = [], [pid]
    while todo:
        kids = children(todo.pop())
        found += kids
        todo += kids
    return found


def wrk(url, seconds, connections, script=None):
    """One wrk run (-t1 for one connection, -t2 otherwise; `script`: a Lua
    file for -s); req/s, p50 and p99 in ms, non-2xx responses, socket errors."""
    out = subprocess.run(
        ["wrk", "-t%d" % min(2, connections), "-c%d" % connections, "-d%ds" % seconds, "--latency"]
        + (["-s", script] if script else []) + [url],
        capture_output=True, text=True, timeout=seconds + 30,
    ).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise RuntimeError("wrk printed no Requests/sec:\n" + out)

    def pct(label):
        mm = re.search(r"^\s+%s%%\s+([\d.]+)(us|ms|s)\s*$" % label, out, re.M)
        value, unit = float(mm.group(1)), mm.group(2)
        return value * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": float(m.group(1)),
        "p50": pct("50"),
        "p99": pct("99"),
        "bad": int(errors.group(1)) if errors else 0,
        "socket_errors": socket_errors.group(1) if socket_errors else "",
    }


def start_apache(state, www, port, extra, defines=()):
    """Apache serving `www` on 127.0.0.1:`port`, its conf, logs and mod_fcgid
    sockets in `state` (created), `extra` appended to the template; returns
    the Popen of its parent process once the port answers (with its
    `conf` and `defines`, for stop_apache)."""
    for d in (state, state + "/run", state + "/fcgid-ipc"):
        os.makedirs(d, mode=0o755, exist_ok=True)
        os.chmod(d, 0o755)
    run_as = "User www-data\nGroup www-data" if os.geteuid() == 0 else "# not root"
    if os.geteuid() == 0:
        shutil.chown(state + "/fcgid-ipc", "www-data", "www-data")
        os.chmod(state + "/fcgid-ipc", 0o700)
    conf = open(os.path.join(REPO, "tests/apache_support/httpd.conf.in")).read()
    for key, value in (("STATE_DIR", state), ("WEB_ROOT", www), ("PORT", str(port)),
                       ("RUN_AS", run_as), ("EXTRA_CONF", extra)):
        conf = conf.replace("@%s@" % key, value)
    write(state + "/httpd.conf", conf, 0o644)
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C"}
    apache = subprocess.Popen(
        [APACHE, "-f", state + "/httpd.conf", "-DFOREGROUND"] + ["-D" + d for d in defines],
        env=env, cwd=state, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=open(state + "/stderr.log", "w"), start_new_session=True,
    )
    apache.conf, apache.defines = state + "/httpd.conf", list(defines)
    if not wait_for_port(port, apache, 15):
        stop_apache(apache)
        sys.exit("bench: Apache did not start:\n%s%s" % (
            open(state + "/stderr.log").read(),
            open(state + "/error.log").read() if os.path.exists(state + "/error.log") else ""))
    return apache


def wait_for_port(port, process, seconds):
    """True once 127.0.0.1:`port` accepts a connection; False if `process`
    (a Popen) ends first or `seconds` pass."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return True
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.05)


def stop_apache(apache):
    """`apache2 -f CONF -k stop` (SIGTERM to its parent process if that
    fails), then waits for the parent to end; SIGKILL after 15 s."""
    if apache is not None and apache.poll() is None:
        stopped = subprocess.run(
            [APACHE, "-f", apache.conf, "-k", "stop"] + ["-D" + d for d in apache.defines],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin", "LANG": "C"}, timeout=30,
        ).returncode == 0
        if not stopped and apache.poll() is None:
            apache.send_signal(signal.SIGTERM)
        try:
            apache.wait(15)
        except subprocess.TimeoutExpired:
            apache.kill()
            apache.wait()


def kill_leftovers(needle):
    """Waits up to 10 s for processes mentioning `needle` (a temp dir) to end,
    then SIGKILLs those left, by pid."""
    for _ in range(100):
        if not processes_under(needle):
            break
        time.sleep(0.1)
    for pid in processes_under(needle):
        os.kill(pid, signal.SIGKILL)


def passenger_conf(state, app_root, processes, app_lines):
    """mod_passenger (Debian's libapache2-mod-passenger) for the application
    in `app_root`, exactly `processes` application processes (PassengerMinInstances
    = PassengerMaxPoolSize), run as www-data, its files in `state`/passenger
    (created); `app_lines` say what the application is (PassengerAppType ...)."""
    os.makedirs(state + "/passenger", mode=0o755, exist_ok=True)
    return """LoadModule passenger_module %(mod)s
PassengerRoot %(root)s
PassengerDefaultRuby /usr/bin/ruby
PassengerInstanceRegistryDir "%(state)s/passenger"
PassengerLogFile "%(state)s/passenger.log"
PassengerDisableSecurityUpdateCheck on
PassengerDefaultUser www-data
PassengerDefaultGroup www-data
PassengerMaxPoolSize %(n)d
PassengerMinInstances %(n)d
PassengerAppRoot "%(app)s"
%(lines)s""" % {"mod": PASSENGER, "root": PASSENGER_ROOT, "state": state, "app": app_root,
                "n": processes, "lines": app_lines}


def passenger_version():
    out = subprocess.run(["dpkg-query", "-W", "-f=${Version}", "libapache2-mod-passenger"],
                         capture_output=True, text=True).stdout
    return out or "(unknown version)"


def proxy_http_conf(port):
    """mod_proxy_http: every URL to the HTTP server on 127.0.0.1:`port`."""
    return """LoadModule proxy_module %(m)s/mod_proxy.so
LoadModule proxy_http_module %(m)s/mod_proxy_http.so
ProxyPass "/" "http://127.0.0.1:%(p)d/"
ProxyPassReverse "/" "http://127.0.0.1:%(p)d/"
""" % {"m": MODULES, "p": port}
