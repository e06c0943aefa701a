"""CPU time per request by kind of process (Apache, fcgi-shim, its Python
worker, flup, wrk, other) during one wrk run; used by bench/wsgi-vs-flup.py
when BENCH_CPU_SPLIT=bench/cpu-split.py. Reads /proc before and after.

  cpu-split.py WEB_ROOT URL SECONDS
"""
import os, sys, time, subprocess
def snapshot():
    out = {}
    tck = os.sysconf("SC_CLK_TCK")
    for n in os.listdir("/proc"):
        if not n.isdigit(): continue
        try:
            st = open("/proc/%s/stat" % n).read()
            comm = st[st.index("(")+1:st.rindex(")")]
            f = st.rsplit(")",1)[1].split()
            cmd = open("/proc/%s/cmdline" % n,"rb").read().replace(b"\0",b" ").decode(errors="replace")
        except OSError: continue
        out[int(n)] = (comm, cmd, (int(f[11])+int(f[12]))/tck, int(f[11])/tck)
    return out
def kind(comm, cmd, www):
    if comm == "apache2": return "apache"
    if comm == "wrk": return "wrk"
    if www in cmd and ("/shim/" in cmd or "/relay/" in cmd): return "fcgi-shim"
    if www in cmd and "/flup/" in cmd: return "flup"
    if www in cmd and "/c/" in cmd: return "libfcgi"
    if "fcgi-shim wsgi" in cmd or ("-c import os,sys" in cmd and "hello" in cmd): return "python worker"
    return "other"
www, url, secs = sys.argv[1], sys.argv[2], int(sys.argv[3])
a = snapshot()
out = subprocess.run(["wrk","-t2","-c4","-d%ds"%secs,url],capture_output=True,text=True).stdout
b = snapshot()
import re
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
tot = {}
usr = {}
for pid,(comm,cmd,t,u) in b.items():
    t0 = a[pid][2] if pid in a else 0
    u0 = a[pid][3] if pid in a else 0
    k = kind(comm, cmd, www)
    tot[k] = tot.get(k,0) + (t - t0)
    usr[k] = usr.get(k,0) + (u - u0)
n = rps*secs
print("%s: %.0f req/s; CPU us per request: %s" % (url, rps, ", ".join("%s %.0f (user %.0f)" % (k, v/n*1e6, usr[k]/n*1e6) for k,v in sorted(tot.items(), key=lambda x:-x[1]))))
