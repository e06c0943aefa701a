#!/usr/bin/env bash
# `make bench`: build the release binary, make sure wrk and the test
# virtualenv (Django, Flask, flup) exist, run bench/wsgi-vs-flup.py with it.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk" >&2
    if [ "$(id -u)" -eq 0 ]; then apt-get install -y wrk >&2; else sudo apt-get install -y wrk >&2; fi
fi
cargo build --release
python=$(./scripts/test-venv.sh)
# The ceiling, when libfcgi-dev is installed: a C responder measured alongside.
extra=()
if [ -f /usr/include/fcgiapp.h ]; then
    mkdir -p target/bench
    gcc -O2 -o target/bench/hello-libfcgi bench/hello-libfcgi.c -lfcgi
    extra=(--c-responder target/bench/hello-libfcgi)
else
    echo "bench: no libfcgi-dev; not measuring the C responder (apt-get install libfcgi-dev)" >&2
fi
exec "$python" bench/wsgi-vs-flup.py "${extra[@]}" "$@"
