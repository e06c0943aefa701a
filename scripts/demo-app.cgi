#!/bin/sh
# A small CGI/1.1 program for `make demo`: fcgi-shim ([app] kind = "cgi") runs
# it once per request. It shows what the request looked like and has a form
# that POSTs back to the same URL. Everything echoed is HTML-escaped.
PATH=/usr/bin:/bin
export PATH

esc() {
    # HTML-escape stdin.
    sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g' \
        -e 's/"/\&quot;/g' -e "s/'/\&#39;/g"
}

show() {
    # show NAME VALUE: one table row, both escaped.
    printf '<tr><th>%s</th><td><code>' "$1"
    printf '%s' "$2" | esc
    printf '</code></td></tr>\n'
}

body=""
if [ "$REQUEST_METHOD" = "POST" ]; then
    # Read at most 4 KiB of the body; CONTENT_LENGTH must be a plain number.
    case "$CONTENT_LENGTH" in
        '' | *[!0-9]*) len=0 ;;
        *) len=$CONTENT_LENGTH ;;
    esac
    [ "$len" -gt 4096 ] && len=4096
    body=$(head -c "$len")
fi

printf 'Content-Type: text/html; charset=utf-8\r\n'
printf 'Cache-Control: no-store\r\n'
printf '\r\n'
cat <<'EOF'
<!DOCTYPE html>
<html lang="en">
<head><meta charset="utf-8"><title>fcgi-shim demo</title>
<style>
body { font-family: sans-serif; max-width: 46em; margin: 2em auto; }
th { text-align: left; padding-right: 1em; }
code { background: #f3f3f3; }
</style></head>
<body>
<h1>fcgi-shim demo</h1>
<p>Apache + mod_fcgid started <code>mysite.fcgi</code> (fcgi-shim), which ran
this CGI program for your request.</p>
<table>
EOF
show "Request method" "$REQUEST_METHOD"
show "PATH_INFO" "$PATH_INFO"
show "QUERY_STRING" "$QUERY_STRING"
show "SCRIPT_NAME" "$SCRIPT_NAME"
show "REQUEST_URI" "$REQUEST_URI"
show "Server time" "$(date '+%Y-%m-%d %H:%M:%S %Z')"
show "Program pid" "$$"
if [ "$REQUEST_METHOD" = "POST" ]; then
    show "POST body (raw)" "$body"
fi
cat <<'EOF'
</table>
<h2>Try it</h2>
<form method="post" action="">
<label>Message: <input name="message" value="hello &lt;world&gt; &amp; all"></label>
<button type="submit">POST it back</button>
</form>
<p>Or change the URL: <a href="/some/path?a=1&amp;b=2">/some/path?a=1&amp;b=2</a></p>
</body>
</html>
EOF
