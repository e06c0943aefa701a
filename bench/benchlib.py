"""What the bench scripts share: log lines, a free loopback port, writing a
file with a mode, a private Apache + mod_fcgid from the tests' template.
Standard library only."""

import os
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


def start_apache(state, www, port, extra):
    """Apache in the foreground on `port`, serving `www`, its conf, pid, logs
    and mod_fcgid's sockets in `state` (which must hold run/ and fcgid-ipc/),
    `extra` added to tests/apache_support/httpd.conf.in. Returns once it
    accepts connections (the Popen; stop it with SIGTERM)."""
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
        [APACHE, "-f", state + "/httpd.conf", "-DFOREGROUND"], env=env, cwd=state,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return apache
        except OSError:
            if apache.poll() is not None or time.monotonic() > deadline:
                sys.exit("bench: Apache did not start:\n" + open(state + "/error.log").read())
            time.sleep(0.05)


def stop_apache(apache):
    """SIGTERM, 15 s, then SIGKILL; reaped."""
    if apache is None or apache.poll() is not None:
        return
    apache.send_signal(signal.SIGTERM)
    try:
        apache.wait(15)
    except subprocess.TimeoutExpired:
        apache.kill()
        apache.wait()
