#!/usr/bin/env bash
# What the benchmarks (`make bench`, `make bench-flup`, `make bench-node`) need
# besides the test virtualenv and node: the release build, wrk (installed
# with apt-get if missing) and, when Debian's libfcgi-dev is installed, the C
# libfcgi responder target/bench/hello-libfcgi (bench/hello-libfcgi.c, gcc
# -O2 -lfcgi).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk" >&2
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y wrk >&2; else sudo apt-get install -y wrk >&2; fi
fi
"${CARGO:-cargo}" build --release
if [ -f /usr/include/fcgiapp.h ]; then
    mkdir -p target/bench
    gcc -O2 -o target/bench/hello-libfcgi bench/hello-libfcgi.c -lfcgi
else
    echo "bench: no libfcgi-dev; no C responder to measure (apt-get install -y libfcgi-dev)" >&2
fi
