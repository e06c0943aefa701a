# fcgi-shim's WSGI adapter (PEP 3333), shipped inside the fcgi-shim binary.
#
# Owns: importing the application, turning each request the shim sends into
# an environ, calling the application and streaming its response back.
# Must not: import anything outside the standard library, write anything but
# frames to the shim's pipe, speak any web server's protocol (the shim's Rust
# front does: limits, aborts and header rules live there), or hold a response
# or request body whole.
#
# The shim starts it as `python -c BOOT LEN MODULE ATTR DEBUG [PATH...]` and
# writes these LEN bytes of source to its stdin first. Then both sides speak
# frames on the worker's stdin/stdout: one type byte, a 4-byte big-endian
# length, the payload.
#   shim -> worker: R environ ("name\0value\0"...), B body bytes, E end of body
#   worker -> shim: S ready, I import failure ("summary\n" + traceback),
#                   H head ("200 OK\0Name\0value\0"...), B body bytes, D done
# wsgi.errors, print() and the application's logging go to stderr, which the
# shim logs line by line.

import os
import re
import signal
import struct
import sys
import traceback

IN_FD = os.dup(0)
OUT_FD = os.dup(1)
# Nothing the application prints may reach the shim's pipes.
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.close(_null)
os.dup2(2, 1)
sys.stdin = open(os.devnull)
try:
    sys.stdout.reconfigure(line_buffering=True)
except (AttributeError, ValueError):
    pass

_HEADER = struct.Struct(">BI")
_pack = _HEADER.pack
_unpack_from = _HEADER.unpack_from
_R, _B, _E = ord("R"), ord("B"), ord("E")
READ_SIZE = 65536
# Body frames to the shim are at most this long (the shim passes a frame on
# in parts as it arrives); queued output is written once it reaches
# FLUSH_AT, even for a list body, and a chunk that long goes out at once,
# written from the application's own object (no copy).
FRAME_MAX = 1 << 30
FLUSH_AT = 65536


class ProtocolError(Exception):
    pass


def write_fd(fd, data):
    """All of `data` to `fd` (one write in the common case)."""
    n = os.write(fd, data)
    if n == len(data):
        return
    view = memoryview(data)[n:]
    while view:
        view = view[os.write(fd, view):]


def write_all(data):
    """All of `data` to the shim."""
    write_fd(OUT_FD, data)


def writev_all(parts):
    """All of `parts` (bytes-like objects), in order, to the shim."""
    n = os.writev(OUT_FD, parts)
    while True:
        for i, part in enumerate(parts):
            if n < len(part):
                break
            n -= len(part)
        else:
            return
        parts = [memoryview(part)[n:]] + parts[i + 1:]
        n = os.writev(OUT_FD, parts)


class BufferedFd:
    """An fd read in large pieces: `buf[pos:]` is what was read and not yet used."""

    __slots__ = ("fd", "buf", "pos")

    def __init__(self, fd):
        self.fd = fd
        self.buf = b""
        self.pos = 0

    def _fill(self, need):
        """At least `need` unused bytes from `pos` (then 0), or None at the
        end of the stream (what was left stays in `buf`)."""
        buf = self.buf[self.pos:]
        while len(buf) < need:
            chunk = os.read(self.fd, max(READ_SIZE, need - len(buf)))
            if not chunk:
                self.buf, self.pos = buf, 0
                return None
            buf += chunk
        self.buf, self.pos = buf, 0
        return buf


class FrameReader(BufferedFd):
    """Frames from the shim."""

    __slots__ = ()

    def next(self):
        """(type, payload), or None when the shim closed the pipe."""
        buf, pos = self.buf, self.pos
        if len(buf) - pos < 5:
            buf = self._fill(5)
            if buf is None:
                return None
            pos = 0
        kind, length = _unpack_from(buf, pos)
        end = pos + 5 + length
        if len(buf) < end and length >= READ_SIZE:
            # A large payload: read straight into its own object.
            self.buf, self.pos = b"", 0
            return self._read_payload(kind, length, buf[pos + 5:])
        if len(buf) < end:
            buf = self._fill(end - pos)
            if buf is None:
                return None
            pos, end = 0, 5 + length
        self.pos = end
        return kind, buf[pos + 5:end]

    def _read_payload(self, kind, length, have):
        parts = [have] if have else []
        need = length - len(have)
        while need:
            chunk = os.read(self.fd, need)
            if not chunk:
                return None
            parts.append(chunk)
            need -= len(chunk)
        return kind, parts[0] if len(parts) == 1 else b"".join(parts)


class Input:
    """wsgi.input: the request body as the shim streams it, with a real EOF."""

    def __init__(self, reader):
        self._reader = reader
        # Unread bytes: self._buf[self._pos:] (an offset, not a copy per read).
        self._buf = b""
        self._pos = 0
        self._eof = False

    def _chunk(self):
        """The next body bytes the shim sent, b"" at the end of the body."""
        while not self._eof:
            frame = self._reader.next()
            if frame is None:
                raise ProtocolError("the shim closed the pipe in the middle of a body")
            kind, payload = frame
            if kind == _B:
                if payload:
                    return payload
            elif kind == _E:
                self._eof = True
            else:
                raise ProtocolError("unexpected frame %r in a body" % chr(kind))
        return b""

    def _pull(self):
        """One more chunk after the unread bytes; False at the end."""
        chunk = self._chunk()
        if not chunk:
            return False
        rest = self._buf[self._pos:]
        self._buf = rest + chunk if rest else chunk
        self._pos = 0
        return True

    def _take(self, end):
        """The unread bytes up to offset `end` of the buffer."""
        buf, pos = self._buf, self._pos
        if pos == 0 and end == len(buf):
            self._buf = b""
            return buf
        self._pos = end
        return buf[pos:end]

    def read(self, size=-1):
        if size is None or size < 0:
            size = sys.maxsize
        buf, pos = self._buf, self._pos
        if len(buf) - pos >= size:
            return self._take(pos + size)
        # The pieces are joined once (no copy of all so far per chunk).
        parts = [buf[pos:] if pos else buf] if len(buf) > pos else []
        have = len(buf) - pos
        self._buf, self._pos = b"", 0
        while have < size:
            chunk = self._chunk()
            if not chunk:
                break
            parts.append(chunk)
            have += len(chunk)
        if have > size:
            last = parts[-1]
            cut = len(last) - (have - size)
            parts[-1] = last[:cut]
            self._buf, self._pos = last, cut
        if not parts:
            return b""
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def read1(self, size=-1):
        if len(self._buf) == self._pos:
            self._pull()
        avail = len(self._buf) - self._pos
        if size is None or size < 0 or size > avail:
            size = avail
        return self._take(self._pos + size)

    def readline(self, size=-1):
        start = self._pos
        while True:
            buf = self._buf
            nl = buf.find(b"\n", start)
            if nl >= 0:
                end = nl + 1
                break
            if 0 <= size <= len(buf) - self._pos:
                end = self._pos + size
                break
            start = len(buf) - self._pos
            if not self._pull():
                end = len(self._buf)
                break
            # _pull moved the unread bytes to offset 0.
        if 0 <= size < end - self._pos:
            end = self._pos + size
        return self._take(end)

    def readlines(self, hint=-1):
        lines, total = [], 0
        while True:
            line = self.readline()
            if not line:
                return lines
            lines.append(line)
            total += len(line)
            if 0 < hint <= total:
                return lines

    def __iter__(self):
        return self

    def __next__(self):
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def discard_rest(self):
        self._buf, self._pos = b"", 0
        while self._chunk():
            pass


class FileWrapper:
    """wsgi.file_wrapper: a file read in blocks, closed with the response."""

    def __init__(self, filelike, blksize=65536):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self):
        read, size = self.filelike.read, self.blksize
        while True:
            data = read(size)
            if not data:
                return
            yield data


# RFC 9110 tchar: anything else in a header name.
_BAD_NAME = re.compile(r"[^!#$%&'*+\-.^_`|~0-9A-Za-z]").search
_BAD_VALUE = re.compile(r"[\r\n\0]").search
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "upgrade"))


# The shim checks every head again (its check is the one that counts: RFC 9110
# token names, no CR/LF/NUL anywhere); these catch an application's mistake
# early, as a 500 with a traceback instead of the shim's 502.
_BAD_STATUS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]").search


# Statuses and (name, value) pairs that passed the checks: an application
# sends the same few again and again, so a set lookup stands for the checks.
# Bounded (unique Set-Cookie values stop being remembered once it is full).
_CHECKED = set()
_CHECKED_MAX = 4096


def _remember(checked):
    if len(_CHECKED) < _CHECKED_MAX:
        _CHECKED.add(checked)


def _check_status(status):
    if (type(status) is not str or len(status) < 4 or not status[:3].isdigit()
            or status[3] != " " or _BAD_STATUS(status) or not _latin1(status)):
        raise ValueError("status must be a str like '200 OK', not %r" % (status,))


def _latin1(text):
    """PEP 3333: status and headers are str holding latin-1 only."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _check_header(name, value):
    if type(name) is not str or type(value) is not str:
        raise TypeError("header %r: names and values must be str" % ((name, value),))
    if not name or _BAD_NAME(name) or _BAD_VALUE(value):
        raise ValueError("invalid header %r" % ((name, value),))
    if not _latin1(name) or not _latin1(value):
        raise ValueError("header %r is not latin-1 (PEP 3333)" % ((name, value),))
    if name.lower() in _HOP_BY_HOP:
        raise ValueError("hop-by-hop header %r is not allowed in WSGI (PEP 3333)" % name)


class ClientGone(Exception):
    """The web server closed the connection while we wrote a response."""


class Request:
    """One request: start_response, write and queueing the response. The
    subclasses say how a head, body bytes and the end look on the wire."""

    __slots__ = ("status", "headers", "sent", "committed", "out", "parts")

    def __init__(self):
        self.status = None
        self.headers = None
        # sent: the head is queued; committed: it went out.
        self.sent = False
        self.committed = False
        self.out = bytearray()
        # A large chunk not yet written: [what was queued before it, its
        # frame header, the chunk] (see _send_large).
        self.parts = []

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.committed:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
            self.out = bytearray()
            self.parts = []
            self.sent = False
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if type(status) is not str or status not in _CHECKED:
            _check_status(status)
            _remember(status)
        if type(headers) is not list:
            raise TypeError("headers must be a list, not %r" % type(headers).__name__)
        for pair in headers:
            if type(pair) is not tuple or len(pair) != 2:
                raise TypeError("each header must be a (name, value) tuple, not %r" % (pair,))
            name, value = pair
            if type(name) is not str or type(value) is not str or pair not in _CHECKED:
                _check_header(name, value)
                _remember(pair)
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data):
        """The write() callable start_response returns (unbuffered)."""
        self.add(data)
        self.flush()

    def add(self, data):
        """Queue a body chunk (and the head before the first one) in pieces
        of at most PIECE_MAX bytes, each after its _piece_header."""
        if type(data) is not bytes:
            data = _body_bytes(data)
        if not data:
            return
        if not self.sent:
            data = self._with_head(data)
        if len(data) >= FLUSH_AT:
            self._send_large(data)
            return
        out = self.out
        if len(data) <= self.PIECE_MAX:
            out += self._piece_header(len(data))
            out += data
        else:
            view = memoryview(data)
            step = self.PIECE_MAX
            for i in range(0, len(data), step):
                piece = view[i:i + step]
                out += self._piece_header(len(piece))
                out += piece
        if len(out) >= FLUSH_AT:
            self.flush()


def _body_bytes(data):
    if type(data) is bytes:
        return data
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data)
    raise TypeError("the application yielded %r, not bytes" % type(data).__name__)


class FramedRequest(Request):
    """A request the shim sent as frames: the response goes back as frames."""

    __slots__ = ()

    def _head(self):
        if self.status is None:
            raise AssertionError("the application returned a body before calling start_response")
        parts = [self.status]
        for name, value in self.headers:
            parts.append(name)
            parts.append(value)
        head = ("\0".join(parts) + "\0").encode("latin-1")
        self.out += _pack(ord("H"), len(head))
        self.out += head
        self.sent = True

    # Frames the shim can pass on as they arrive.
    PIECE_MAX = FRAME_MAX

    def _with_head(self, data):
        self._head()
        return data

    def _piece_header(self, length):
        return _pack(_B, length)

    def _send_large(self, data):
        """`data` as frames written from `data` itself, after what is
        queued. Held until the next chunk, flush or the end (then the
        response's end goes in the same write): the application's own
        object, no copy."""
        if self.parts:
            self.flush()
        parts = [self.out] if self.out else []
        if len(data) <= FRAME_MAX:
            parts += (_pack(_B, len(data)), data)
        else:
            view = memoryview(data)
            for i in range(0, len(data), FRAME_MAX):
                piece = view[i:i + FRAME_MAX]
                parts += (_pack(_B, len(piece)), piece)
        self.parts = parts
        self.out = bytearray()

    def flush(self):
        if self.parts:
            if self.out:
                self.parts.append(self.out)
            writev_all(self.parts)
            self.parts = []
            self.out = bytearray()
            self.committed = self.sent
        elif self.out:
            write_all(self.out)
            self.out = bytearray()
            self.committed = self.sent

    def finish(self):
        if not self.sent:
            self._head()
        self.out += _pack(ord("D"), 0)
        self.flush()


def error_page(title, detail):
    body = (
        "<!DOCTYPE html>\n<html><head><title>%s</title></head><body>\n<h1>%s</h1>\n%s</body></html>\n"
        % (title, title, detail)
    )
    return body.encode("utf-8")


def _escape(text):
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class Server:
    def __init__(self, app, debug):
        self.app = app
        self.debug = debug
        self.reader = FrameReader(IN_FD)
        self.base = {
            "wsgi.version": (1, 0),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": True,
            "wsgi.run_once": False,
            "wsgi.file_wrapper": FileWrapper,
            "wsgi.input_terminated": True,
        }

    def serve(self):
        reader = self.reader
        while True:
            frame = reader.next()
            if frame is None:
                return
            kind, payload = frame
            if kind == _R:
                self.handle(payload)
            else:
                raise ProtocolError("expected a request, got frame %r" % chr(kind))

    def handle(self, payload):
        fields = payload.decode("latin-1").split("\0")
        it = iter(fields)
        environ = dict(zip(it, it))
        environ.update(self.base)
        environ["wsgi.url_scheme"] = (
            "https" if environ.get("HTTPS", "off").lower() in ("on", "1", "yes") else "http")
        body = environ["wsgi.input"] = Input(self.reader)
        self.respond(FramedRequest(), environ)
        body.discard_rest()

    def respond(self, request, environ):
        """Call the application and send its response (a 500 page if it fails)."""
        result = None
        try:
            result = self.app(environ, request.start_response)
            if type(result) is list or type(result) is tuple:
                for data in result:
                    request.add(data)
            else:
                add, flush = request.add, request.flush
                for data in result:
                    add(data)
                    flush()
        except ProtocolError:
            raise
        except ClientGone:
            pass
        except Exception:
            self.failed(request, environ)
        finally:
            if type(result) is not list and hasattr(result, "close"):
                try:
                    result.close()
                except Exception:
                    self.failed(request, environ)
        try:
            request.finish()
        except ClientGone:
            pass
        except Exception:
            self.failed(request, environ)
            request.finish()

    def failed(self, request, environ):
        """The application raised: log the traceback; answer 500 if we still can."""
        text = traceback.format_exc()
        sys.stderr.write(
            "error in %s %s:\n%s"
            % (environ.get("REQUEST_METHOD", "-"), environ.get("REQUEST_URI", environ.get("PATH_INFO", "-")), text)
        )
        sys.stderr.flush()
        if request.committed:
            return
        detail = "<pre>%s</pre>\n" % _escape(text) if self.debug else "<p>The server log says why.</p>\n"
        page = error_page("500 Internal Server Error", detail)
        request.out = bytearray()
        request.parts = []
        request.sent = False
        request.status = "500 Internal Server Error"
        request.headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))]
        request.add(page)


def innermost_frame(exc):
    """'File "x.py", line 3, in <module>' for the deepest frame of the user's code."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return 'File "%s", line %s' % (exc.filename, exc.lineno)
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<")]
    if not frames:
        return None
    f = frames[-1]
    return 'File "%s", line %s, in %s' % (f.filename, f.lineno, f.name)


def load(module_name, attribute):
    import importlib

    module = importlib.import_module(module_name)
    call = attribute.endswith("()")
    obj = module
    for part in (attribute[:-2] if call else attribute).split("."):
        obj = getattr(obj, part)
    if call:
        obj = obj()
    if not callable(obj):
        raise TypeError("%s:%s is not callable (a WSGI application is)" % (module_name, attribute))
    return obj


def end_group(signum=None, frame=None):
    """The shim stops us, or is gone (PR_SET_PDEATHSIG sends SIGTERM, or our
    input ends): nothing the application started may outlive us. We lead our
    own process group, so a SIGTERM to it reaches every process it started."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        os.killpg(0, signal.SIGTERM)
    except OSError:
        pass
    os._exit(0)


def main(argv):
    signal.signal(signal.SIGTERM, end_group)
    module_name, attribute, debug = argv[0], argv[1], argv[2] == "1"
    # `python -c` put the working directory (often the web root) first; keep
    # it importable, but after the standard library and site-packages, so a
    # stray json.py there cannot shadow them.
    if sys.path and sys.path[0] == "":
        sys.path.append(sys.path.pop(0))
    for path in reversed(argv[3:]):
        sys.path.insert(0, path)
    try:
        app = load(module_name, attribute)
    except BaseException as exc:
        summary = "".join(traceback.format_exception_only(type(exc), exc)).strip().splitlines()[-1]
        where = innermost_frame(exc)
        if where:
            summary += " (" + where + ")"
        report = (summary.replace("\n", " ") + "\n" + traceback.format_exc()).encode("utf-8", "replace")
        write_all(_pack(ord("I"), len(report)) + report)
        return 1
    ready = ("Python %s" % sys.version.split()[0]).encode()
    server = Server(app, debug)
    write_all(_pack(ord("S"), len(ready)) + ready)
    server.serve()
    end_group()


sys.exit(main(sys.argv[2:]))
