"""`make bench-flup`: fcgi-shim's WSGI kind vs flup's WSGIServer, behind the same
private Apache + mod_fcgid, measured alternately with wrk.

Both sites serve bench/hello.py through the rewrite .htaccess from
htaccess-examples/ (or, with --apache lean, mapped in the server config) in
one Apache (the template of the end-to-end tests, with KeepAlive On):
  /shim/  mysite.fcgi = the release fcgi-shim, mysite.toml: kind = "wsgi"
          (every request through the shim to its Python worker)
  /flup/  mysite.fcgi = a Python script running flup.server.fcgi.WSGIServer
          (threaded; what Django's old runfastcgi guide used)
Each round runs wrk against one site, then the other, so load from anything
else on the machine falls on both. Every request runs the application.

Standard library only; run with the test virtualenv's python (it has flup):
  bench/wsgi-vs-flup.py [--rounds 8] [--seconds 3] [--connections 4] [--apache htaccess|lean]
                        [--c-responder BIN] [--compare BIN]

--compare BIN adds /other/: another fcgi-shim build (e.g. of the commit before
a change) with the same settings, measured in the same rounds.

BENCH_CPU_SPLIT=bench/cpu-split.py adds the CPU time per request of each kind
of process; BENCH_KEEP_LOGS=/path/prefix keeps Apache's logs; BENCH_HOLD=SECONDS
keeps the warmed-up sites up that long before measuring (for strace, perf or
bench/cpu-split.py; it prints the URLs and the web root).
"""

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from apache_bench import (APACHE, REPO, children, free_port, kill_leftovers, processes_under,
                          rss_kib, say, start_apache, stop_apache, write, wrk)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--processes", type=int, default=0,
                    help="FcgidMaxProcessesPerClass (default: twice the connections)")
    ap.add_argument("--shim", default=os.path.join(REPO, "target/release/fcgi-shim"))
    ap.add_argument("--apache", choices=("htaccess", "lean"), default="htaccess",
                    help="htaccess: each site is reached through the rewrite .htaccess, as on a "
                    "shared host (Apache reads .htaccess twice per request); lean: the server "
                    "config maps /SITE/ to SITE/mysite.fcgi, no .htaccess (less of Apache's own "
                    "cost in every number)")
    ap.add_argument("--c-responder", default="",
                    help="also measure this FastCGI program (bench/hello-libfcgi.c): the ceiling")
    ap.add_argument("--compare", default="",
                    help="also measure this other fcgi-shim build, same settings, as /other/")
    args = ap.parse_args()

    try:
        import flup.server.fcgi  # noqa: F401
    except ImportError:
        sys.exit("bench: this Python has no flup; run it with the test virtualenv (make bench-flup does)")
    if not shutil.which("wrk"):
        sys.exit("bench: wrk is missing: apt-get install -y wrk")
    python = sys.executable

    tmp = tempfile.mkdtemp(prefix="fcgi-shim-bench.")
    os.chmod(tmp, 0o755)
    apache = None
    try:
        www, app, state = (os.path.join(tmp, d) for d in ("www", "app", "apache"))
        sites = ["shim", "flup"] + (["c"] if args.c_responder else []) + (["other"] if args.compare else [])
        for d in [www, app, state, state + "/run", state + "/fcgid-ipc"] + [www + "/" + x for x in sites]:
            os.makedirs(d, mode=0o755, exist_ok=True)
            os.chmod(d, 0o755)
        shutil.copy(os.path.join(REPO, "bench/hello.py"), app)
        os.chmod(app + "/hello.py", 0o644)
        htaccess = open(os.path.join(REPO, "htaccess-examples/mod_fcgid.htaccess")).read()
        if args.apache == "htaccess":
            for site in sites:
                write("%s/%s/.htaccess" % (www, site), htaccess, 0o644)
        if args.c_responder:
            shutil.copy(args.c_responder, www + "/c/mysite.fcgi")
            os.chmod(www + "/c/mysite.fcgi", 0o755)
        for site, binary in (("shim", args.shim), ("other", args.compare)):
            if site not in sites:
                continue
            shutil.copy(binary, www + "/%s/mysite.fcgi" % site)
            os.chmod(www + "/%s/mysite.fcgi" % site, 0o755)
            write(www + "/%s/mysite.toml" % site,
                  '[app]\nkind = "wsgi"\nmodule = "hello"\npython = "%s"\npython_path = ["%s"]\n'
                  '[log]\nlevel = "warn"\n' % (python, app), 0o644)
        write(www + "/flup/mysite.fcgi",
              "#!%s\n# flup's WSGIServer, as in Django's old runfastcgi guide.\n"
              "import sys\nsys.path.insert(0, %r)\n"
              "from hello import application\n"
              "from flup.server.fcgi import WSGIServer\n"
              "WSGIServer(application).run()\n" % (python, app), 0o755)

        port = free_port()
        # mod_fcgid hands a process back to its idle list only after the
        # response went out; a request that finds none idle waits a whole
        # second. Allow more processes than connections so that neither
        # server is measured on that stall.
        extra = "KeepAlive On\nFcgidMaxProcessesPerClass %d\n" % (args.processes or 2 * args.connections)
        if args.apache == "lean":
            extra += "<Directory \"%s\">\n    AllowOverride None\n    Options +ExecCGI\n</Directory>\n" % www
            extra += "<Files \"mysite.fcgi\">\n    SetHandler fcgid-script\n</Files>\n"
            for site in sites:
                extra += "Alias /%s/ \"%s/%s/mysite.fcgi/\"\n" % (site, www, site)
        apache = start_apache(state, www, port, extra)

        urls = {site: "http://127.0.0.1:%d/%s/hello" % (port, site) for site in sites}
        # Warm up with more connections than processes, so mod_fcgid spawns
        # its maximum of processes for both sites before anything is measured
        # (it spawns one only when a request finds none idle).
        max_procs = args.processes or 2 * args.connections
        say("Apache on port %d; warming up until mod_fcgid runs %d processes per site" % (port, max_procs))
        for site, url in urls.items():
            for _ in range(10):
                wrk(url, 2, 2 * max_procs)
                if len(processes_under(www + "/" + site + "/mysite.fcgi")) >= max_procs:
                    break
            say("%s: %d processes" % (site, len(processes_under(www + "/" + site + "/mysite.fcgi"))))
        if os.environ.get("BENCH_HOLD"):
            # For profiling: keep the warmed-up sites up for that many seconds.
            say("holding for %s s: %s (web root %s)" % (
                os.environ["BENCH_HOLD"], " ".join(urls.values()), www))
            time.sleep(float(os.environ["BENCH_HOLD"]))
        if os.environ.get("BENCH_CPU_SPLIT"):
            for site in sites:
                subprocess.run([sys.executable, os.environ["BENCH_CPU_SPLIT"], www, urls[site], "4"])
        measured_from = os.path.getsize(state + "/access.log")
        results = {site: [] for site in sites}
        for r in range(args.rounds):
            # Rotate which goes first, so none always follows another.
            for site in sites[r % len(sites):] + sites[:r % len(sites)]:
                res = wrk(urls[site], args.seconds, args.connections)
                results[site].append(res)
                say("round %d %-4s %8.0f req/s  p50 %.2f ms  p99 %.2f ms%s" % (
                    r + 1, site, res["rps"], res["p50"], res["p99"],
                    "  (non-2xx: %d)" % res["bad"] if res["bad"] else ""))

        # Memory: the FastCGI processes mod_fcgid started, and their children.
        rss = {}
        for site in sites:
            procs = [p for p, cmd in processes_under(www + "/" + site + "/").items()]
            rows = []
            for p in procs:
                rows.append((p, {"shim": "fcgi-shim", "other": "fcgi-shim", "flup": "flup", "c": "libfcgi"}[site], rss_kib(p)))
                for kid in children(p):
                    rows.append((kid, "python worker", rss_kib(kid)))
                    # An older build's direct mode: the worker's guardian.
                    for grandkid in children(kid):
                        rows.append((grandkid, "guardian", rss_kib(grandkid)))
            rss[site] = rows
        log = open(state + "/error.log").read()
        slow = {site: 0 for site in results}
        with open(state + "/access.log") as f:
            f.seek(measured_from)
            measured_lines = f.read().splitlines()
        for line in measured_lines:
            m = re.search(r'"GET /(shim|flup|other)/\S* [^"]*" \d+ \S+ (\d+)us', line)
            if m and int(m.group(2)) > 500000:
                slow[m.group(1)] += 1
        if os.environ.get("BENCH_KEEP_LOGS"):
            shutil.copy(state + "/error.log", os.environ["BENCH_KEEP_LOGS"] + ".error.log")
            shutil.copy(state + "/access.log", os.environ["BENCH_KEEP_LOGS"] + ".access.log")
    finally:
        stop_apache(apache)
        kill_leftovers(tmp)
        shutil.rmtree(tmp, ignore_errors=True)

    med = {site: {k: statistics.median(x[k] for x in rows) for k in ("rps", "p50", "p99")}
           for site, rows in results.items()}
    bad = sum(x["bad"] for rows in results.values() for x in rows)
    print()
    print("fcgi-shim (kind = \"wsgi\") vs flup WSGIServer, hello world, behind one Apache %s + mod_fcgid"
          % subprocess.run([APACHE, "-v"], capture_output=True, text=True).stdout.split("\n")[0].split("/")[-1])
    print("wrk -t2 -c%d -d%ds, %d alternating rounds, medians; %d cores, shared machine"
          % (args.connections, args.seconds, args.rounds, os.cpu_count()))
    print("%-10s %10s %10s %10s" % ("", "req/s", "p50 ms", "p99 ms"))
    for site in sites:
        m = med[site]
        print("%-10s %10.0f %10.2f %10.2f" % (site, m["rps"], m["p50"], m["p99"]))
    # Load from elsewhere drifts: compare each round's pair, then take the median.
    ratios = sorted(a["rps"] / b["rps"] for a, b in zip(results["shim"], results["flup"]))
    ratio = statistics.median(ratios)
    print("ratio shim/flup req/s: %.2fx (median of the %d per-round ratios %s; target >= 1.5x); p99 %s" % (
        ratio, len(ratios), ", ".join("%.2f" % r for r in ratios),
        "no worse" if med["shim"]["p99"] <= med["flup"]["p99"] else "WORSE"))
    if "c" in results:
        c_ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(results["c"], results["flup"]))
        print("ceiling: the C libfcgi responder does %.2fx flup here" % c_ratio)
    if "other" in results:
        o_ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(results["other"], results["flup"]))
        s_ratio = statistics.median(a["rps"] / b["rps"] for a, b in zip(results["shim"], results["other"]))
        print("other: %s does %.2fx flup here; this build does %.2fx of it" % (args.compare, o_ratio, s_ratio))
    for site in sites:
        rows = rss[site]
        total = sum(r[2] for r in rows)
        print("RSS %s: %d processes, %d KiB in all: %s" % (
            site, len(rows), total, ", ".join("%s %d KiB" % (name, kib) for _, name, kib in rows)))
    print("measured requests over 0.5 s in Apache's access log (mod_fcgid's 1 s wait for a free process): %s"
          % ", ".join("%s %d" % kv for kv in sorted(slow.items())))
    if bad:
        print("WARNING: %d non-2xx responses" % bad)
    errors = [l for l in log.splitlines() if "error" in l.lower() and "fcgi-shim" in l]
    if errors:
        print("shim errors in Apache's log:\n" + "\n".join(errors[:10]))


if __name__ == "__main__":
    main()
