"""Apache mod_fcgid authenticator and authorizer that checks Django's users.

Put this file beside manage.py and run it with shim-templates/django-auth.fcgi
(FcgidAuthenticator and FcgidAuthorizer in an .htaccess: see
htaccess-examples/protect-directory.htaccess). fcgi-shim gives the
application each FastCGI AUTHORIZER request as an ordinary WSGI request:
FCGI_ROLE is "AUTHORIZER", and mod_fcgid's FCGI_APACHE_ROLE says which
stage asks:

  AUTHENTICATOR  REMOTE_USER and REMOTE_PASSWD (the Basic auth password) are
                 set: 200 lets the user in, anything else refuses.
  AUTHORIZER     REMOTE_USER was authenticated: 200 allows this user here.
  ACCESS_CHECKER before authentication (FcgidAccessChecker): not used here.

On 200 the body is ignored, and "Variable-NAME: value" headers become
environment variables of the request (for a CGI or FastCGI program behind).
Any other status is sent to the visitor as it is. What is decided is printed
to stderr, which fcgi-shim writes to Apache's error log.
"""

import sys

import django

django.setup()

from django.contrib.auth import authenticate, get_user_model  # noqa: E402

# The name the visitor's browser shows when it asks for a password.
REALM = "Restricted"


def log(message):
    print("django-auth: " + message, file=sys.stderr, flush=True)


def answer(start_response, status, message, headers=()):
    log(message)
    body = b"" if status.startswith("200") else (status + "\n").encode()
    start_response(status, [("Content-Type", "text/plain")] + list(headers))
    return [body]


def refuse(start_response, message):
    return answer(
        start_response,
        "401 Unauthorized",
        message,
        [("WWW-Authenticate", 'Basic realm="%s"' % REALM)],
    )


def application(environ, start_response):
    role = environ.get("FCGI_APACHE_ROLE")
    username = environ.get("REMOTE_USER", "")
    User = get_user_model()
    if role == "AUTHENTICATOR":
        user = authenticate(username=username, password=environ.get("REMOTE_PASSWD", ""))
        if user is not None:
            # Passed on to what serves the request as DJANGO_USER_ID.
            return answer(
                start_response,
                "200 OK",
                "allowed %s" % username,
                [("Variable-DJANGO_USER_ID", str(user.pk))],
            )
        if User._default_manager.filter(**{User.USERNAME_FIELD: username}).exists():
            return refuse(start_response, "refused %s: wrong password" % username)
        return refuse(start_response, "refused %s: no such user" % username)
    if role == "AUTHORIZER":
        # Every active user may enter; to allow one group only, add
        # groups__name="staff" to the filter.
        active = User._default_manager.filter(
            **{User.USERNAME_FIELD: username, "is_active": True}
        )
        if active.exists():
            return answer(start_response, "200 OK", "authorized %s" % username)
        return answer(start_response, "403 Forbidden", "forbidden %s" % username)
    return answer(start_response, "403 Forbidden", "refused: not run as an authenticator (role %r)" % role)
