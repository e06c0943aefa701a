"""Views for fcgi-shim's end-to-end tests: each shows one thing a user sees."""

import os
import time

from django.http import HttpResponse, StreamingHttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt


def index(request):
    # URLs built by reverse() and build_absolute_uri() must not contain mysite.fcgi.
    return HttpResponse(
        "django index\nlogin url: %s\nabsolute: %s\nscript_name: %r\n"
        % (reverse("login"), request.build_absolute_uri(reverse("upload")), request.META.get("SCRIPT_NAME")),
        content_type="text/plain",
    )


def login(request):
    """A login form with Django's CSRF protection (the middleware checks the POST)."""
    if request.method == "POST":
        return HttpResponse("welcome %s" % request.POST.get("username", ""), content_type="text/plain")
    return render(request, "probeapp/login.html")


@csrf_exempt
def upload(request):
    """Sends the uploaded file back, so the test can compare every byte
    (exempt from CSRF: the login view is where the tests check CSRF)."""
    if request.method != "POST":
        return HttpResponse("POST a file", content_type="text/plain")
    f = request.FILES["file"]
    response = StreamingHttpResponse(f.chunks(), content_type="application/octet-stream")
    response["X-Upload-Name"] = f.name
    response["X-Upload-Size"] = str(f.size)
    response["X-Upload-Note"] = request.POST.get("note", "")
    return response


def boom(request):
    raise ValueError("boom from a django view")


def stream(request):
    """First chunk at once; the last only once the test creates the gate file."""
    gate = request.GET["gate"]

    def chunks():
        yield "first chunk\n"
        deadline = time.monotonic() + 20
        while not os.path.exists(gate) and time.monotonic() < deadline:
            time.sleep(0.01)
        yield "last chunk\n"

    return StreamingHttpResponse(chunks(), content_type="text/plain")
