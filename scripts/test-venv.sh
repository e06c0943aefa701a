#!/usr/bin/env bash
# Create (or reuse) the Python virtualenv the WSGI tests and the benchmark use,
# and print its python's path on stdout.
#
# Apache's children run as www-data and cannot read /root, so the venv lives in
# a world-readable place (default /var/tmp/fcgi-shim-test-venv, override with
# FCGI_SHIM_TEST_VENV) and is built from Debian's /usr/bin/python3 (packages
# python3 and python3-venv), not a pyenv interpreter under /root.
# It is reused while tests/python-requirements.txt is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

venv=${FCGI_SHIM_TEST_VENV:-/var/tmp/fcgi-shim-test-venv}
base_python=${FCGI_SHIM_BASE_PYTHON:-/usr/bin/python3}
requirements=tests/python-requirements.txt
stamp_want=$( (cat "$requirements"; "$base_python" --version) | sha256sum | cut -d' ' -f1)

if [ -x "$venv/bin/python" ] && [ "$(cat "$venv/.fcgi-shim-stamp" 2>/dev/null)" = "$stamp_want" ]; then
  echo "$venv/bin/python"
  exit 0
fi

if ! "$base_python" -c 'import venv, ensurepip' 2>/dev/null; then
  echo "test-venv.sh: $base_python cannot make a virtualenv; install Debian's python3 and python3-venv (apt-get install python3 python3-venv)" >&2
  exit 1
fi

# The stamp is written last: a half-built venv has none and is rebuilt.
rm -rf "$venv"
"$base_python" -m venv "$venv" >&2
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$requirements" >&2
echo "$stamp_want" > "$venv/.fcgi-shim-stamp"
chmod -R a+rX "$venv"
echo "$venv/bin/python"
