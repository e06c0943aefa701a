"""A Flask application for fcgi-shim's end-to-end tests: routes, url_for,
a POST form and a redirect."""

from flask import Flask, redirect, request, url_for

app = Flask(__name__)


@app.route("/")
def index():
    return "flask index\nhello url: %s\nexternal: %s\n" % (
        url_for("hello", name="world"),
        url_for("hello", name="world", _external=True),
    )


@app.route("/hello/<name>")
def hello(name):
    return "hello %s" % name


@app.route("/form", methods=["GET", "POST"])
def form():
    if request.method == "POST":
        return "posted %s" % request.form["word"]
    return '<form method="post" action="%s"><input name="word"></form>' % url_for("form")


@app.route("/go")
def go():
    return redirect(url_for("hello", name="redirected"))


@app.route("/auth")
def auth():
    # Reaches the application only with the .htaccess line that passes it.
    return "authorization: %r" % request.headers.get("Authorization")
