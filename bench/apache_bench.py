"""Helpers of the benchmarks in bench/ (standard library only): a private
Apache from the end-to-end tests' template (tests/apache_support/httpd.conf.in)
started and stopped, wrk runs parsed, and the process table read from /proc.
Used by wsgi-vs-flup.py and node-vs-peers.py; it measures nothing itself."""

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


def wrk(url, seconds, connections):
    out = subprocess.run(
        ["wrk", "-t%d" % min(2, connections), "-c%d" % connections, "-d%ds" % seconds, "--latency", url],
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
    the Popen of its parent process once the port answers."""
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
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return apache
        except OSError:
            if apache.poll() is not None or time.monotonic() > deadline:
                stop_apache(apache)
                sys.exit("bench: Apache did not start:\n%s%s" % (
                    open(state + "/stderr.log").read(),
                    open(state + "/error.log").read() if os.path.exists(state + "/error.log") else ""))
            time.sleep(0.05)


def stop_apache(apache):
    """SIGTERM to Apache's parent process, SIGKILL after 15 s."""
    if apache is not None and apache.poll() is None:
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
