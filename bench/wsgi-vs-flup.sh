#!/usr/bin/env bash
# `make bench-flup`: build the release binary, make sure wrk and the test
# virtualenv (Django, Flask, flup) exist (bench/prepare.sh, scripts/test-venv.sh),
# run bench/wsgi-vs-flup.py with it,
# once per concurrency in BENCH_CONNECTIONS (default "2 4 8"; each run has
# its own Apache), then print one line per run with the ratios.
# Arguments go to every run, e.g. `--apache lean` or `--rounds 4`; with
# `--connections N` among them there is just that one run.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
./bench/prepare.sh
python=$(./scripts/test-venv.sh)
# The ceiling, when libfcgi-dev is installed: a C responder measured alongside.
extra=()
if [ -f /usr/include/fcgiapp.h ]; then
    extra=(--c-responder target/bench/hello-libfcgi)
fi
case " $* " in
    *" --connections "*) exec "$python" bench/wsgi-vs-flup.py "${extra[@]}" "$@" ;;
esac
summary=()
for c in ${BENCH_CONNECTIONS:-2 4 8}; do
    out=$("$python" bench/wsgi-vs-flup.py "${extra[@]}" --connections "$c" "$@")
    printf '%s\n\n' "$out"
    summary+=("c=$c: $(grep -E '^ratio|^ceiling|^other:' <<<"$out" | sed -E 's/ \(median of the [0-9]+ per-round ratios ([^;]*);[^)]*\)/ (rounds \1)/' | tr '\n' ' ')")
done
echo "Summary ($*):"
printf '  %s\n' "${summary[@]}"
