#!/usr/bin/env bash
# `make demo`: a private Apache + mod_fcgid on a free loopback port serving a
# throw-away web root set up exactly like a shared-hosting user would:
#   .htaccess    = htaccess-examples/mod_fcgid.htaccess
#   mysite.fcgi  = the settings in the shebang form ([app] kind = "cgi",
#                  running scripts/demo-app.cgi), first line #! the release
#                  build of fcgi-shim copied outside the web root
# Ctrl-C stops Apache (by its pid), waits for every process it started and
# removes the temp dir.
#
# The httpd.conf comes from tests/apache_support/httpd.conf.in, the same
# template the end-to-end tests use.
#
# Environment:
#   FCGI_SHIM_DEMO_BIN=/path  use this binary instead of building one
#   DEMO_PORT=8080            use this port instead of a free one
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
apache_bin=/usr/sbin/apache2
modules=/usr/lib/apache2/modules

# Never fails: the terminal (or the `| tee` we print to) may be gone.
say() { printf '%s\n' "demo: $*" >&2 2>/dev/null || true; }
die() { say "$*"; exit 1; }

# --- 1. Apache + mod_fcgid ---------------------------------------------------
if [ ! -x "$apache_bin" ] || [ ! -f "$modules/mod_fcgid.so" ]; then
    pkgs="apache2 libapache2-mod-fcgid"
    say "Apache or mod_fcgid is missing; installing $pkgs"
    if [ "$(id -u)" -eq 0 ]; then
        apt-get update && apt-get install -y $pkgs
    elif command -v sudo >/dev/null 2>&1; then
        sudo apt-get update && sudo apt-get install -y $pkgs
    else
        die "please install them first (as root): apt-get install $pkgs"
    fi
fi
[ -x "$apache_bin" ] && [ -f "$modules/mod_fcgid.so" ] ||
    die "still no $apache_bin or $modules/mod_fcgid.so; this demo expects Debian's layout"

# --- 2. The binary -----------------------------------------------------------
if [ -n "${FCGI_SHIM_DEMO_BIN:-}" ]; then
    shim=$FCGI_SHIM_DEMO_BIN
else
    (cd "$repo" && cargo build --release)
    shim=$repo/target/release/fcgi-shim
fi
[ -x "$shim" ] || die "no executable $shim"

# --- 3. Web root (world-readable: Apache's children run as www-data) ---------
tmp=$(mktemp -d /tmp/fcgi-shim-demo.XXXXXX)
chmod 0755 "$tmp"
www=$tmp/www
app=$tmp/app
state=$tmp/apache
mkdir -m 0755 "$www" "$app" "$state" "$state/run" "$state/fcgid-ipc"

apache_pid=""
tail_pid=""
cleaned=0

# Processes whose command line or executable mentions the temp dir.
procs_in_tmp() {
    local d pid cmd exe
    for d in /proc/[0-9]*; do
        pid=${d#/proc/}
        [ "$pid" = "$$" ] && continue
        [ "$pid" = "$BASHPID" ] && continue
        cmd=$(tr '\0' ' ' <"$d/cmdline" 2>/dev/null) || continue
        exe=$(readlink "$d/exe" 2>/dev/null) || exe=""
        case "$cmd $exe" in
            *"$tmp"*) echo "$pid" ;;
        esac
    done
}

cleanup() {
    [ "$cleaned" = 1 ] && return
    cleaned=1
    trap - INT TERM
    # The terminal (or a pipe we print to) may be gone: never die mid-cleanup,
    # neither of a signal nor of `set -e` after a failed write.
    trap '' PIPE HUP
    set +e
    if [ -n "$apache_pid" ] && kill -0 "$apache_pid" 2>/dev/null; then
        say "stopping Apache (pid $apache_pid)"
        kill -TERM "$apache_pid" 2>/dev/null || true
        for _ in $(seq 150); do
            kill -0 "$apache_pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$apache_pid" 2>/dev/null; then
            say "Apache did not stop in 15 s; SIGKILL $apache_pid"
            kill -KILL "$apache_pid" 2>/dev/null || true
        fi
        wait "$apache_pid" 2>/dev/null || true
    fi
    if [ -n "$tail_pid" ]; then
        kill -TERM "$tail_pid" 2>/dev/null || true
        wait "$tail_pid" 2>/dev/null || true
    fi
    # mod_fcgid's process manager and the shims go away after Apache; wait
    # for them (by pid), then SIGKILL any straggler started from the temp dir.
    local left=""
    for _ in $(seq 100); do
        left=$(procs_in_tmp)
        [ -z "$left" ] && break
        sleep 0.1
    done
    for pid in $left; do
        say "SIGKILL leftover $pid: $(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || true)"
        kill -KILL "$pid" 2>/dev/null || true
    done
    rm -rf "$tmp"
    say "stopped; removed $tmp"
}
trap cleanup EXIT
# Ctrl-C under `| tee` in tmux: tee dies of the same SIGINT, the pane closes
# and a SIGHUP follows at once. Whichever arrives first, ignore the other
# from then on, so the clean-up is never cut short.
trap 'trap "" HUP PIPE; exit 130' INT TERM
trap 'trap "" HUP PIPE INT; exit 129' HUP

cp "$repo/htaccess-examples/mod_fcgid.htaccess" "$www/.htaccess"
chmod 0644 "$www/.htaccess"
# The README's recommended layout, the shebang form: the executable outside
# the web root, mysite.fcgi the settings file itself.
mkdir -m 0755 "$tmp/bin"
cp "$shim" "$tmp/bin/fcgi-shim"
chmod 0755 "$tmp/bin/fcgi-shim"
cp "$repo/scripts/demo-app.cgi" "$app/demo-app.cgi"
chmod 0755 "$app/demo-app.cgi"
cat >"$www/mysite.fcgi" <<EOF
#!$tmp/bin/fcgi-shim
[app]
kind = "cgi"
command = ["$app/demo-app.cgi"]
timeout = 10

[log]
level = "info"
EOF
chmod 0755 "$www/mysite.fcgi"
"$tmp/bin/fcgi-shim" check "$www/mysite.fcgi" >&2 || die "the demo's settings do not pass fcgi-shim check"

if [ "$(id -u)" -eq 0 ]; then
    run_as='User www-data\nGroup www-data'
    chown www-data:www-data "$state/fcgid-ipc"
    chmod 0700 "$state/fcgid-ipc"
else
    run_as='# not root: Apache and its children run as the invoking user'
fi

# --- 4. Apache on a free loopback port ---------------------------------------
port_is_taken() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start_apache() {
    local port=$1 conf=$state/httpd.conf
    sed -e "s|@STATE_DIR@|$state|g" \
        -e "s|@WEB_ROOT@|$www|g" \
        -e "s|@PORT@|$port|g" \
        -e "s|@RUN_AS@|$run_as|g" \
        -e "s|@EXTRA_CONF@||g" \
        "$repo/tests/apache_support/httpd.conf.in" >"$conf"
    env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C \
        "$apache_bin" -f "$conf" -t >/dev/null 2>&1 ||
        { env -i PATH=/usr/bin:/bin:/usr/sbin:/sbin "$apache_bin" -f "$conf" -t; die "bad httpd.conf"; }
    : >"$state/error.log"
    # setsid: own session and process group, so Ctrl-C reaches only this
    # script, which then stops Apache by pid. Foreground: $! is Apache itself.
    env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin LANG=C \
        setsid "$apache_bin" -f "$conf" -DFOREGROUND \
        </dev/null >"$state/stdout.log" 2>&1 &
    apache_pid=$!
    for _ in $(seq 100); do
        kill -0 "$apache_pid" 2>/dev/null || { wait "$apache_pid" || true; apache_pid=""; return 1; }
        port_is_taken "$port" && [ -s "$state/httpd.pid" ] && return 0
        sleep 0.1
    done
    return 1
}

started=0
for attempt in 1 2 3 4 5; do
    if [ -n "${DEMO_PORT:-}" ]; then
        port=$DEMO_PORT
    else
        port=$((20000 + RANDOM % 40000))
        port_is_taken "$port" && continue
    fi
    if start_apache "$port"; then
        started=1
        break
    fi
    if [ -n "${DEMO_PORT:-}" ] || ! grep -q "Address already in use" "$state/error.log" "$state/stdout.log" 2>/dev/null; then
        cat "$state/error.log" "$state/stdout.log" >&2 || true
        die "Apache did not start"
    fi
done
[ "$started" = 1 ] || die "no free port found"

cat >&2 <<EOF

  fcgi-shim demo is running:  http://127.0.0.1:$port/
  web root:                   $www
  Apache error log:           $state/error.log (followed below)

  Press Ctrl-C to stop.

EOF
tail -n +1 -f "$state/error.log" >&2 &
tail_pid=$!
# Returns when Apache exits or a signal arrives (then the traps run).
wait "$apache_pid" || true
say "Apache exited"
