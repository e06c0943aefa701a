#!/usr/bin/env python3
"""`make bench-node`: one Node.js application (bench/hello-node.js, the plain
http module) behind Apache three ways, measured side by side with wrk:

  shim       Apache + mod_fcgid + the rewrite .htaccess (htaccess-examples/)
             running the release fcgi-shim as mysite.fcgi with kind = "http"
             (or, --apache lean, mysite.fcgi mapped in the server config);
             its mod_fcgid processes share one node (`shared`, the default)
  passenger  Apache + mod_passenger (Debian libapache2-mod-passenger):
             PassengerAppType node, PassengerStartupFile hello-node.js
  proxy      Apache + mod_proxy_http straight to one node process on a
             loopback port (what a host with shell access and a VPS would do)
  cfloor     (with --c-responder BIN, which `make bench-node` builds from
             bench/hello-libfcgi.c when libfcgi-dev is installed) the same
             Apache + mod_fcgid + .htaccess as the shim's, running a minimal C
             libfcgi responder as mysite.fcgi: no application at all, the
             ceiling of anything served through mod_fcgid on this machine

Each is its own private Apache on a free loopback port, from the end-to-end
tests' template (tests/apache_support/httpd.conf.in, KeepAlive On). The rounds
interleave (which one goes first rotates), so load from anything else on the
machine falls on all three; medians are reported, and the ratios are the
medians of the per-round ratios. Target (issue 16): shim >= passenger and
shim >= 0.8x proxy in req/s. cfloor/proxy says how much of mod_proxy_http's
rate any FastCGI program behind mod_fcgid can reach here. Then one more wrk
per site with every process's CPU time read from /proc around it: CPU per
request by kind of process, and the least a relay from mod_fcgid to node
can cost (cfloor's Apache + the C responder + proxy's node) against
mod_proxy_http's whole request.

Standard library only:
  bench/node-vs-peers.py [--rounds 6] [--seconds 3] [--connections 4]
                         [--processes N] [--passenger-processes 2]
                         [--apache htaccess|lean] [--shim target/release/fcgi-shim]

BENCH_HOLD=SECONDS keeps the warmed-up sites up that long before measuring
(for strace, perf or a CPU split; it prints the URLs); BENCH_KEEP_TMP=1 keeps
the temp dir with the three Apaches' logs.
"""

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from apache_bench import (APACHE, PASSENGER, REPO, free_port, kill_leftovers, passenger_conf,
                          passenger_version, processes_running, processes_under, proxy_http_conf,
                          rss_kib, say, start_apache, stop_apache, write, wrk)

def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--processes", type=int, default=0,
                    help="FcgidMaxProcessesPerClass for the shim (default: twice the connections: "
                    "mod_fcgid sends one request at a time to a process)")
    ap.add_argument("--passenger-processes", type=int, default=2,
                    help="PassengerMinInstances = PassengerMaxPoolSize (a node process serves "
                    "many requests at once; default one per core of a 2-core machine)")
    ap.add_argument("--apache", choices=("htaccess", "lean"), default="htaccess")
    ap.add_argument("--shim", default=os.path.join(REPO, "target/release/fcgi-shim"))
    ap.add_argument("--c-responder", default="",
                    help="also measure this FastCGI program (bench/hello-libfcgi.c) behind the "
                    "shim's mod_fcgid setup: the ceiling")
    args = ap.parse_args()

    node = shutil.which("node")
    missing = [what for what, ok in (
        ("wrk (apt-get install -y wrk)", shutil.which("wrk")),
        ("node (apt-get install -y nodejs)", node),
        ("mod_passenger (apt-get install -y libapache2-mod-passenger)", os.path.exists(PASSENGER)),
        ("the release fcgi-shim (cargo build --release)", os.path.exists(args.shim)),
    ) if not ok]
    if missing:
        sys.exit("bench: missing: " + "; ".join(missing))
    processes = args.processes or 2 * args.connections

    tmp = tempfile.mkdtemp(prefix="fcgi-shim-bench-node.")
    os.chmod(tmp, 0o755)
    apaches, proxied = {}, None
    names = ["shim", "passenger", "proxy"] + (["cfloor"] if args.c_responder else [])
    try:
        app, www, public = tmp + "/app", tmp + "/www", tmp + "/app/public"
        cwww = tmp + "/cwww"
        for d in (app, www, public) + ((cwww,) if args.c_responder else ()):
            os.makedirs(d, mode=0o755)
            os.chmod(d, 0o755)
        shutil.copy(os.path.join(REPO, "bench/hello-node.js"), app)
        os.chmod(app + "/hello-node.js", 0o644)
        shutil.copy(args.shim, www + "/mysite.fcgi")
        os.chmod(www + "/mysite.fcgi", 0o755)
        write(www + "/mysite.toml", '[app]\nkind = "http"\ncommand = ["%s", "%s/hello-node.js"]\n'
              '[log]\nlevel = "warn"\n' % (node, app), 0o644)
        extra_shim = "KeepAlive On\nFcgidMaxProcessesPerClass %d\n" % processes
        if args.c_responder:
            shutil.copy(args.c_responder, cwww + "/mysite.fcgi")
            os.chmod(cwww + "/mysite.fcgi", 0o755)
        extra_c = extra_shim
        if args.apache == "htaccess":
            for root in (www, cwww) if args.c_responder else (www,):
                shutil.copy(os.path.join(REPO, "htaccess-examples/mod_fcgid.htaccess"), root + "/.htaccess")
                os.chmod(root + "/.htaccess", 0o644)
        else:
            extra_shim += lean_mapping(www)
            extra_c += lean_mapping(cwww)
        if os.geteuid() == 0:
            for d in (app, www) + ((cwww,) if args.c_responder else ()):
                subprocess.run(["chown", "-R", "www-data:www-data", d], check=True)

        app_port = free_port()
        proxied = subprocess.Popen([node, app + "/hello-node.js"], env={"PORT": str(app_port)},
                                   stdin=subprocess.DEVNULL, start_new_session=True)
        ports = {name: free_port() for name in names}
        apaches["shim"] = start_apache(tmp + "/apache-shim", www, ports["shim"], extra_shim)
        apaches["passenger"] = start_apache(
            tmp + "/apache-passenger", public, ports["passenger"],
            "KeepAlive On\n" + passenger_conf(
                tmp + "/apache-passenger", app, args.passenger_processes,
                "PassengerAppType node\nPassengerStartupFile hello-node.js\nPassengerNodejs \"%s\"\n" % node),
            defines=("FCGI_SHIM_NO_FCGID",))
        apaches["proxy"] = start_apache(tmp + "/apache-proxy", public, ports["proxy"],
                                        "KeepAlive On\n" + proxy_http_conf(app_port),
                                        defines=("FCGI_SHIM_NO_FCGID",))
        if args.c_responder:
            apaches["cfloor"] = start_apache(tmp + "/apache-cfloor", cwww, ports["cfloor"], extra_c)
        urls = {name: "http://127.0.0.1:%d/hello" % ports[name] for name in names}

        # Warm up: every server answers, mod_fcgid has spawned its processes.
        for name in names:
            deadline = time.monotonic() + 60
            while True:
                res = wrk(urls[name], 1, 1)
                if res["rps"] > 0 and not res["bad"]:
                    break
                if time.monotonic() > deadline:
                    sys.exit("bench: %s does not answer 200: see %s/apache-%s/error.log" % (name, tmp, name))
                time.sleep(0.5)
        for _ in range(10):
            wrk(urls["shim"], 2, 2 * processes)
            if len(shims(www)) >= processes:
                break
        wrk(urls["passenger"], 2, 2 * processes)
        if args.c_responder:
            wrk(urls["cfloor"], 2, 2 * processes)
        say("shim: %d mod_fcgid processes; passenger: %d node processes; proxy: 1 node process" % (
            len(shims(www)), len(passenger_nodes(app))))

        if os.environ.get("BENCH_HOLD"):
            # For profiling: keep the warmed-up sites up that many seconds.
            say("holding for %s s: %s (temp dir %s)" % (
                os.environ["BENCH_HOLD"], " ".join("%s=%s" % kv for kv in urls.items()), tmp))
            time.sleep(float(os.environ["BENCH_HOLD"]))
        results = {name: [] for name in names}
        for r in range(args.rounds):
            for name in names[r % len(names):] + names[:r % len(names)]:
                res = wrk(urls[name], args.seconds, args.connections)
                results[name].append(res)
                say("round %d %-9s %8.0f req/s  p50 %.2f ms  p99 %.2f ms%s" % (
                    r + 1, name, res["rps"], res["p50"], res["p99"],
                    "  (non-2xx: %d, socket errors: %s)" % (res["bad"], res["socket_errors"])
                    if res["bad"] or res["socket_errors"] else ""))
        # One more wrk per site, with the CPU time of every process read from
        # /proc around it: where a request's time goes.
        split = {name: cpu_split(urls[name], args.seconds, args.connections, tmp) for name in names}
        nodes = len([p for p in processes_under(app + "/hello-node.js")
                     if p != proxied.pid and p not in passenger_nodes(app)])
        rss = {
            "shim": sum(rss_kib(p) for p in processes_under(tmp + "/www")) +
            sum(rss_kib(p) for p in processes_under(app + "/hello-node.js")
                if p != proxied.pid and p not in passenger_nodes(app)),
            "passenger": sum(rss_kib(p) for p in passenger_nodes(app)),
            "proxy": rss_kib(proxied.pid),
            "cfloor": sum(rss_kib(p) for p in processes_under(cwww)),
        }
        errors = [l for l in open(tmp + "/apache-shim/error.log").read().splitlines()
                  if "fcgi-shim" in l and ("error" in l or "warn" in l)]
    finally:
        for a in apaches.values():
            stop_apache(a)
        if proxied is not None:
            proxied.send_signal(signal.SIGTERM)
            proxied.wait(10)
        kill_leftovers(tmp)
        if not os.environ.get("BENCH_KEEP_TMP"):
            shutil.rmtree(tmp, ignore_errors=True)

    med = {name: {k: statistics.median(x[k] for x in rows) for k in ("rps", "p50", "p99")}
           for name, rows in results.items()}
    print()
    print("Node.js hello world (plain http, %s) behind Apache %s: fcgi-shim kind = \"http\" (mod_fcgid, %s) "
          "vs Passenger %s vs mod_proxy_http" % (
              subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip(),
              subprocess.run([APACHE, "-v"], capture_output=True, text=True).stdout.split("\n")[0].split("/")[-1],
              args.apache, passenger_version()))
    print("wrk -t%d -c%d -d%ds, %d interleaved rounds, medians; %d cores, shared machine; "
          "processes: shim %d sharing %d node (shared = true, the default), passenger %d node, "
          "proxy 1 node" % (
              min(2, args.connections), args.connections, args.seconds, args.rounds, os.cpu_count(),
              processes, nodes, args.passenger_processes))
    print("%-10s %10s %10s %10s %12s" % ("", "req/s", "p50 ms", "p99 ms", "RSS KiB"))
    for name in names:
        m = med[name]
        print("%-10s %10.0f %10.2f %10.2f %12d" % (name, m["rps"], m["p50"], m["p99"], rss[name]))
    for other, target in (("passenger", 1.0), ("proxy", 0.8)):
        ratios = sorted(a["rps"] / b["rps"] for a, b in zip(results["shim"], results[other]))
        ratio = statistics.median(ratios)
        print("ratio shim/%s req/s: %.2fx (median of the per-round ratios %s; target >= %.1fx: %s)" % (
            other, ratio, ", ".join("%.2f" % x for x in ratios), target,
            "met" if ratio >= target else "NOT met"))
    if args.c_responder:
        for num, den in (("cfloor", "proxy"), ("shim", "cfloor")):
            ratios = sorted(a["rps"] / b["rps"] for a, b in zip(results[num], results[den]))
            print("ratio %s/%s req/s: %.2fx (median of the per-round ratios %s)" % (
                num, den, statistics.median(ratios), ", ".join("%.2f" % x for x in ratios)))
    kinds = ["Apache", "fcgi-shim", "node", "C responder", "Passenger's core", "other"]
    print("CPU per request (µs, from /proc around one more wrk -d%ds per site; the load of anything "
          "else on the machine counts as other):" % args.seconds)
    print("%-10s %10s " % ("", "req/s") + " ".join("%16s" % k for k in kinds))
    for name in names:
        rps, us = split[name]
        print("%-10s %10.0f " % (name, rps) + " ".join("%16.0f" % us.get(k, 0) for k in kinds))
    if args.c_responder:
        # Any program behind mod_fcgid that passes requests on to node pays
        # at least Apache's mod_fcgid path and a FastCGI endpoint (what the C
        # responder costs), and node its own time.
        floor = split["cfloor"][1]
        relay = floor.get("Apache", 0) + floor.get("C responder", 0) + split["proxy"][1].get("node", 0)
        proxy = split["proxy"][1].get("Apache", 0) + split["proxy"][1].get("node", 0)
        if relay > 0:
            print("the least a relay from mod_fcgid to node costs here: %.0f µs (Apache's mod_fcgid path %.0f "
                  "+ a FastCGI endpoint %.0f + node %.0f) against %.0f for mod_proxy_http's whole request: "
                  "at most %.2fx its rate" % (
                      relay, floor.get("Apache", 0), floor.get("C responder", 0),
                      split["proxy"][1].get("node", 0), proxy, proxy / relay))
    bad = sum(x["bad"] for rows in results.values() for x in rows)
    if bad:
        print("WARNING: %d non-2xx responses" % bad)
    if errors:
        print("shim warnings/errors in Apache's log:\n" + "\n".join(errors[:10]))


def cpu_split(url, seconds, connections, tmp):
    """(req/s, {kind: CPU µs per request}) of one wrk run against `url`."""
    def snapshot():
        tick = os.sysconf("SC_CLK_TCK")
        out = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            try:
                with open("/proc/%s/stat" % name) as f:
                    stat = f.read()
                with open("/proc/%s/cmdline" % name, "rb") as f:
                    cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            fields = stat.rsplit(")", 1)[1].split()
            out[int(name)] = (comm, cmd, (int(fields[11]) + int(fields[12])) / tick)
        return out

    def kind(comm, cmd):
        if comm == "apache2":
            return "Apache"
        if comm == "wrk":
            return None
        if tmp + "/www/" in cmd:
            return "fcgi-shim"
        if tmp + "/cwww/" in cmd:
            return "C responder"
        if comm == "node" or "hello-node.js" in cmd or "NodeApp" in cmd:
            return "node"
        if "Passenger" in comm or "Passenger" in cmd:
            return "Passenger's core"
        return "other"

    before = snapshot()
    res = wrk(url, seconds, connections)
    after = snapshot()
    total = {}
    for pid, (comm, cmd, cpu) in after.items():
        k = kind(comm, cmd)
        if k:
            total[k] = total.get(k, 0) + cpu - (before[pid][2] if pid in before else 0)
    n = max(res["rps"] * seconds, 1)
    return res["rps"], {k: v / n * 1e6 for k, v in total.items()}


def lean_mapping(www):
    """Server config mapping every URL to www/mysite.fcgi (--apache lean: no .htaccess)."""
    return ("<Directory \"%s\">\n    AllowOverride None\n    Options +ExecCGI\n</Directory>\n"
            "<Files \"mysite.fcgi\">\n    SetHandler fcgid-script\n</Files>\n"
            "AliasMatch \"^/(.*)$\" \"%s/mysite.fcgi/$1\"\n" % (www, www))


def shims(www):
    """The shim processes mod_fcgid runs for the site (not their process-group guards)."""
    return processes_running(www + "/mysite.fcgi")


def passenger_nodes(app):
    """Node processes Passenger started for `app` ("Passenger NodeApp: <app root>")."""
    return [p for p, cmd in processes_under(app).items() if cmd.startswith("Passenger NodeApp")]


if __name__ == "__main__":
    main()
