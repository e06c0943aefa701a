# fcgi-shim's WSGI adapter (PEP 3333), shipped inside the fcgi-shim binary.
#
# Owns: importing the application, turning each request the shim sends into
# an environ, calling the application and streaming its response back; in
# direct mode also FastCGI with the web server (a responder, one connection
# at a time) and the guardian.
# Must not: import anything outside the standard library, write anything but
# frames to the shim's pipe, or hold a response or request body whole.
#
# The shim starts it as `python -c BOOT LEN MODULE ATTR DEBUG [PATH...]` and
# writes these LEN bytes of source to its stdin first. Then both sides speak
# frames on the worker's stdin/stdout: one type byte, a 4-byte big-endian
# length, the payload.
#   shim -> worker: R environ ("name\0value\0"...), B body bytes, E end of body
#   worker -> shim: S ready, I import failure ("summary\n" + traceback),
#                   H head ("200 OK\0Name\0value\0"...), B body bytes, D done
# Direct mode (FCGI_SHIM_LISTEN_FD set): S ends with "\0direct" when the
# guardian runs; L lend (decimal N, 0 = no limit): serve the web server's
# FastCGI connections on the inherited listening socket ourselves until
# SIGUSR1, N requests, a change the shim's inotify fd (FCGI_SHIM_WAKE_FD)
# shows, or an accept failure, then Q ("COUNT\0asked|limit|changed|accept").
# The guardian, a clone(CLONE_FILES) child made before the application is
# imported, answers 502/504 on the connection in flight and sends X
# ("crash|timeout\0STATUS\0SUMMARY\0SECONDS") when the worker dies or hangs.
# wsgi.errors, print() and the application's logging go to stderr, which the
# shim logs line by line.

import errno
import os
import re
import select
import signal
import struct
import sys
import time
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
_R, _B, _E, _L = ord("R"), ord("B"), ord("E"), ord("L")
READ_SIZE = 65536
# Body frames to the shim are at most this long; queued output is written
# once it reaches FLUSH_AT, even for a list body.
FRAME_MAX = 65536
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
        if len(buf) < end:
            buf = self._fill(end - pos)
            if buf is None:
                return None
            pos, end = 0, 5 + length
        self.pos = end
        return kind, buf[pos + 5:end]


class Input:
    """wsgi.input: the request body as the shim streams it, with a real EOF."""

    def __init__(self, reader):
        self._reader = reader
        self._buf = b""
        self._eof = False

    def _pull(self):
        if self._eof:
            return False
        frame = self._reader.next()
        if frame is None:
            raise ProtocolError("the shim closed the pipe in the middle of a body")
        kind, payload = frame
        if kind == _B:
            self._buf += payload
            return True
        if kind == _E:
            self._eof = True
            return False
        raise ProtocolError("unexpected frame %r in a body" % chr(kind))

    def read(self, size=-1):
        if size is None or size < 0:
            while self._pull():
                pass
            data, self._buf = self._buf, b""
            return data
        while len(self._buf) < size and self._pull():
            pass
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def read1(self, size=-1):
        if not self._buf:
            self._pull()
        if size is None or size < 0:
            size = len(self._buf)
        data, self._buf = self._buf[:size], self._buf[size:]
        return data

    def readline(self, size=-1):
        start = 0
        while True:
            nl = self._buf.find(b"\n", start)
            if nl >= 0:
                end = nl + 1
                break
            if 0 <= size <= len(self._buf):
                end = size
                break
            start = len(self._buf)
            if not self._pull():
                end = len(self._buf)
                break
        if 0 <= size < end:
            end = size
        data, self._buf = self._buf[:end], self._buf[end:]
        return data

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
        self._buf = b""
        while self._pull():
            self._buf = b""


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


_BAD_NAME = re.compile(r"[:\r\n\0 \t]").search
_BAD_VALUE = re.compile(r"[\r\n\0]").search
_HOP_BY_HOP = frozenset(("connection", "keep-alive", "transfer-encoding", "upgrade"))


def _check_header(name, value):
    if type(name) is not str or type(value) is not str:
        raise TypeError("header %r: names and values must be str" % ((name, value),))
    if not name or _BAD_NAME(name) or _BAD_VALUE(value):
        raise ValueError("invalid header %r" % ((name, value),))
    if name.lower() in _HOP_BY_HOP:
        raise ValueError("hop-by-hop header %r is not allowed in WSGI (PEP 3333)" % name)


class ClientGone(Exception):
    """The web server closed the connection while we wrote a response."""


class Request:
    """One request: start_response, write and queueing the response. The
    subclasses say how a head, body bytes and the end look on the wire."""

    __slots__ = ("status", "headers", "sent", "committed", "out")

    def __init__(self):
        self.status = None
        self.headers = None
        # sent: the head is queued; committed: it went out.
        self.sent = False
        self.committed = False
        self.out = bytearray()

    def start_response(self, status, headers, exc_info=None):
        if exc_info:
            try:
                if self.committed:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
            self.out = bytearray()
            self.sent = False
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        if type(status) is not str or len(status) < 4 or not status[:3].isdigit() or status[3] != " ":
            raise ValueError("status must be a str like '200 OK', not %r" % (status,))
        if type(headers) is not list:
            raise TypeError("headers must be a list, not %r" % type(headers).__name__)
        for pair in headers:
            if type(pair) is not tuple or len(pair) != 2:
                raise TypeError("each header must be a (name, value) tuple, not %r" % (pair,))
            _check_header(*pair)
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

    def flush(self):
        if self.out:
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
    def __init__(self, app, debug, direct=None):
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
        # Direct mode (None: unavailable), and the state of a lend.
        self.direct = direct
        self.lent = False
        self.hand_back = False
        self.served = 0
        self.sequence = 0

    def serve(self):
        reader = self.reader
        while True:
            frame = reader.next()
            if frame is None:
                return
            kind, payload = frame
            if kind == _R:
                self.handle(payload)
            elif kind == _L:
                self.lend(payload)
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
        request.sent = False
        request.status = "500 Internal Server Error"
        request.headers = [("Content-Type", "text/html; charset=utf-8"), ("Content-Length", str(len(page)))]
        request.add(page)

    # -- Direct mode: the web server's connections, served here -------------

    def on_hand_back(self, signum, frame):
        """SIGUSR1: end the lend. The wait for a connection wakes up (the
        signal wake-up fd is in its poll); a request in progress is finished
        first."""
        if self.lent:
            self.hand_back = True

    def lend(self, payload):
        """Frame L: serve the listening socket until SIGUSR1 ("asked"), the
        limit ("limit"), a change of a watched file ("changed") or an accept
        failure ("accept"), then say so: frame Q, "COUNT\\0WHY"."""
        limit = int(payload or b"0")
        self.served = 0
        why = "accept"
        if self.direct is not None:
            self.hand_back = False
            self.lent = True
            signal.set_wakeup_fd(self.direct.signal_w, warn_on_full_buffer=False)
            try:
                why = self.serve_directly(limit)
            finally:
                signal.set_wakeup_fd(-1)
                self.lent = False
        report = ("%d\0%s" % (self.served, why)).encode()
        write_all(_pack(ord("Q"), len(report)) + report)

    def serve_directly(self, limit):
        direct = self.direct
        wait = direct.poller.poll
        listen_fd, wake_fd, signal_r = direct.listen_fd, direct.wake_fd, direct.signal_r
        while True:
            if self.hand_back:
                return "asked"
            if limit and self.served >= limit:
                return "limit"
            incoming = False
            for fd, _ in wait():
                if fd == listen_fd:
                    incoming = True
                elif fd == wake_fd:
                    # A watched file may have changed: the shim decides
                    # before anyone else is served (as when it accepts).
                    return "changed"
                else:
                    _drain(signal_r)
            if not incoming or self.hand_back:
                continue
            fd = direct.accept()
            if fd < 0:
                err = -fd
                if err == errno.EINTR or err in _ACCEPT_AGAIN:
                    continue
                sys.stderr.write("fcgi-shim: accept() on the web server's socket failed: %s; "
                                 "handing it back to the shim\n" % os.strerror(err))
                sys.stderr.flush()
                return "accept"
            self.serve_connection(fd, limit)

    def serve_connection(self, fd, limit):
        """Requests on one connection until it is closed or the lend ends."""
        conn = Connection(fd)
        try:
            while True:
                begun = conn.next_request()
                if begun is None:
                    return
                rid, keep, params = begun
                self.direct_request(conn, rid, params)
                if (not keep or conn.closed or self.hand_back
                        or (limit and self.served >= limit)):
                    return
        except ProtocolError as e:
            sys.stderr.write("fcgi-shim: malformed FastCGI from the web server: %s; connection closed\n" % e)
        except ClientGone:
            pass
        except OSError as e:
            sys.stderr.write("fcgi-shim: the connection to the web server failed: %s; "
                             "connection closed\n" % e.strerror)
        finally:
            SHARED[0] = _IDLE
            os.close(fd)

    def direct_request(self, conn, rid, params):
        environ = application_environ(params, self.direct.script_name)
        environ.update(self.base)
        environ["wsgi.url_scheme"] = (
            "https" if environ.get("HTTPS", "off").lower() in ("on", "1", "yes") else "http")
        summary = ("%s %s" % (environ.get("REQUEST_METHOD", "-"),
                              environ.get("REQUEST_URI") or environ.get("SCRIPT_NAME") or "-"))
        summary = summary.encode("latin-1")[:SUMMARY_MAX]
        request = DirectRequest(conn, rid, summary)
        body = request.body = environ["wsgi.input"] = DirectInput(conn, request)
        self.sequence += 1
        self.served += 1
        SHARED[_SUMMARY_AT:_SUMMARY_AT + len(summary)] = summary
        _STATE.pack_into(SHARED, 0, _BUSY, rid, conn.fd, time.monotonic_ns(), self.sequence, len(summary))
        self.respond(request, environ)
        if request.gone:
            conn.closed = True
        else:
            body.discard_rest()
        SHARED[0] = _IDLE
        conn.ended(rid)


# ---------------------------------------------------------------------------
# Direct mode: FastCGI from the web server (responder role, one connection at
# a time), the environ the shim would have sent, and the guardian.

_FCGI_HEADER = struct.Struct(">BBHHBx")
_rec_pack = _FCGI_HEADER.pack
_rec_unpack_from = _FCGI_HEADER.unpack_from
_END_BODY = struct.Struct(">IB3x")
_U32 = struct.Struct(">I")
_BEGIN, _ABORT, _END_REQUEST, _PARAMS, _STDIN, _STDOUT = 1, 2, 3, 4, 5, 6
_GET_VALUES, _GET_VALUES_RESULT, _UNKNOWN_TYPE = 9, 10, 11
_RESPONDER, _KEEP_CONN = 1, 1
_REQUEST_COMPLETE, _CANT_MPX_CONN, _UNKNOWN_ROLE = 0, 1, 3
_VALUES = {"FCGI_MAX_CONNS": "1", "FCGI_MAX_REQS": "1", "FCGI_MPXS_CONNS": "0"}
# A record's content is at most 65535 bytes.
RECORD_MAX = 65535
PARAMS_MAX = 1 << 20
# A body spooled before the response (DirectInput.spool_rest) stays in memory
# up to this size.
SPOOL_MEMORY = 1 << 20
# A request running longer than this looks for an abort before its response
# starts (one select(); quicker ones are not worth the system call).
ABORT_CHECK_AFTER = 0.05
_ACCEPT_AGAIN = frozenset((errno.ECONNABORTED, errno.EPROTO, errno.EAGAIN))

# The state shared with the guardian (an anonymous MAP_SHARED mmap): what is
# in flight, then the summary bytes at _SUMMARY_AT. The worker writes the
# summary before the fixed part, so a busy state always has its summary.
# state, request id, conn fd, start (monotonic ns), sequence, summary length
_STATE = struct.Struct("=BxHiqQH")
_IDLE, _BUSY, _HEAD_SENT = 0, 1, 2
_SUMMARY_AT = 32
SUMMARY_MAX = 200
SHARED = bytearray(_SUMMARY_AT)


class Malformed(ProtocolError):
    pass


def _end_request(rid, status):
    return _rec_pack(1, _END_REQUEST, rid, 8, 0) + _END_BODY.pack(0, status)


def _name_values(text):
    """FastCGI name-value pairs of `text` (bytes decoded as latin-1: one
    character per byte), as a list: one loop, no generator (it is on the
    per-request path; dict() of it is the environ)."""
    pairs = []
    add = pairs.append
    pos, end = 0, len(text)
    try:
        while pos < end:
            n = ord(text[pos])
            if n < 128:
                pos += 1
            else:
                n = _U32.unpack(text[pos:pos + 4].encode("latin-1"))[0] & 0x7FFFFFFF
                pos += 4
            v = ord(text[pos])
            if v < 128:
                pos += 1
            else:
                v = _U32.unpack(text[pos:pos + 4].encode("latin-1"))[0] & 0x7FFFFFFF
                pos += 4
            name_end = pos + n
            value_end = name_end + v
            if value_end > end:
                raise IndexError
            add((text[pos:name_end], text[name_end:value_end]))
            pos = value_end
    except (IndexError, struct.error):
        raise Malformed("a truncated name-value pair")
    return pairs


def _encode_name_value(out, name, value):
    for part in (name, value):
        out += bytes((len(part),)) if len(part) < 128 else _U32.pack(len(part) | 0x80000000)
    out += name
    out += value


class Connection(BufferedFd):
    """Records from one web server connection."""

    __slots__ = ("closed", "done")

    def __init__(self, fd):
        BufferedFd.__init__(self, fd)
        self.closed = False
        # Ids of requests ended on this connection: their late records are ignored.
        self.done = set()

    def record(self):
        """(type, request id, content), or None at the end of the stream."""
        buf, pos = self.buf, self.pos
        if len(buf) - pos < 8:
            buf = self._fill(8)
            if buf is None:
                if self.buf:
                    raise Malformed("end of stream in the middle of a record")
                return None
            pos = 0
        version, rtype, rid, length, padding = _rec_unpack_from(buf, pos)
        if version != 1:
            raise Malformed("a record of version %d" % version)
        end = pos + 8 + length + padding
        if len(buf) < end:
            buf = self._fill(end - pos)
            if buf is None:
                raise Malformed("end of stream in the middle of a record")
            pos, end = 0, 8 + length + padding
        self.pos = end
        return rtype, rid, buf[pos + 8:pos + 8 + length]

    def next_request(self):
        """Read up to a responder request's complete params, answering
        management records and refused requests on the way.
        (request id, keep_conn, params bytes), or None: close the connection."""
        rid, keep, pieces, size = 0, 0, [], 0
        while True:
            record = self.record()
            if record is None:
                if rid:
                    raise Malformed("end of stream before the end of the parameters")
                return None
            rtype, rrid, content = record
            if rrid == rid and rid:
                if rtype == _PARAMS:
                    if not content:
                        return rid, keep, b"".join(pieces)
                    size += len(content)
                    if size > PARAMS_MAX:
                        raise Malformed("parameters larger than %d bytes" % PARAMS_MAX)
                    pieces.append(content)
                elif rtype == _ABORT:
                    write_fd(self.fd, _end_request(rid, _REQUEST_COMPLETE))
                    self.ended(rid)
                    if not keep:
                        return None
                    rid, keep, pieces, size = 0, 0, [], 0
                else:
                    raise Malformed("a record of type %d before the end of the parameters" % rtype)
            elif rrid == 0:
                self.management(rtype, content)
            elif rtype == _BEGIN:
                if len(content) < 8:
                    raise Malformed("a BEGIN_REQUEST of %d bytes" % len(content))
                role, flags = content[0] << 8 | content[1], content[2]
                if rid:
                    write_fd(self.fd, _end_request(rrid, _CANT_MPX_CONN))
                    self.ended(rrid)
                elif role != _RESPONDER:
                    write_fd(self.fd, _end_request(rrid, _UNKNOWN_ROLE))
                    self.ended(rrid)
                    if not flags & _KEEP_CONN:
                        return None
                else:
                    rid, keep = rrid, flags & _KEEP_CONN
            else:
                self.stray(rtype, rrid)

    def management(self, rtype, content):
        if rtype == _GET_VALUES:
            out = bytearray()
            for name, _ in _name_values(content.decode("latin-1")):
                value = _VALUES.get(name)
                if value is not None:
                    _encode_name_value(out, name.encode("latin-1"), value.encode())
            write_fd(self.fd, _rec_pack(1, _GET_VALUES_RESULT, 0, len(out), 0) + out)
        else:
            write_fd(self.fd, _rec_pack(1, _UNKNOWN_TYPE, 0, 8, 0) + bytes((rtype,)) + bytes(7))

    def stray(self, rtype, rid):
        """A record for a request that is not active: late ones are ignored."""
        if rtype != _ABORT and rid not in self.done:
            raise Malformed("a record of type %d for request %d, which is not active" % (rtype, rid))

    def ended(self, rid):
        done = self.done
        if len(done) > 64:
            done.clear()
        done.add(rid)


class DirectInput(Input):
    """wsgi.input from the request's STDIN records, read as the application
    asks. ABORT_REQUEST ends it (and the response is dropped)."""

    def __init__(self, conn, request):
        Input.__init__(self, conn)
        self._request = request
        # The rest of the body, once taken off the connection (spool_rest).
        self._spool = None

    def spool_rest(self):
        """Before the response goes out: take what is left of the body off
        the connection. mod_fcgid sends the whole body before it reads any of
        the response, so an application that answers before it has read the
        body would otherwise block both sides. Memory up to SPOOL_MEMORY,
        then an unlinked temporary file, as the shim does."""
        if self._eof or self._spool is not None:
            return
        kept, self._buf = self._buf, b""
        if not self._pull_connection():
            # The body ended right there (a GET): nothing to keep.
            self._buf = kept
            return
        import tempfile

        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_MEMORY)
        spool.write(self._buf)
        self._buf = b""
        while self._pull_connection():
            spool.write(self._buf)
            self._buf = b""
        spool.seek(0)
        self._buf = kept
        self._spool = spool
        self._eof = False

    def _pull(self):
        spool = self._spool
        if spool is None:
            return self._pull_connection()
        if self._eof:
            return False
        chunk = spool.read(READ_SIZE)
        if chunk:
            self._buf += chunk
            return True
        spool.close()
        self._eof = True
        return False

    def discard_rest(self):
        if self._spool is not None:
            self._spool.close()
            self._buf = b""
            self._eof = True
            return
        Input.discard_rest(self)

    def _pull_connection(self):
        if self._eof:
            return False
        conn, rid = self._reader, self._request.rid
        while True:
            record = conn.record()
            if record is None:
                if self._request.sent_end:
                    # The web server closed after our END_REQUEST: nothing lost.
                    conn.closed = True
                    self._eof = True
                    return False
                raise Malformed("end of stream in the middle of a request body")
            rtype, rrid, content = record
            if rrid == rid:
                if rtype == _STDIN:
                    if content:
                        self._buf += content
                        return True
                    self._eof = True
                    return False
                if rtype == _ABORT:
                    self._request.aborted = True
                    self._eof = True
                    return False
                if rtype == _PARAMS and not content:
                    continue
                raise Malformed("a record of type %d in a request body" % rtype)
            elif rrid == 0:
                conn.management(rtype, content)
            elif rtype == _BEGIN:
                write_fd(conn.fd, _end_request(rrid, _CANT_MPX_CONN))
                conn.ended(rrid)
            else:
                conn.stray(rtype, rrid)


class DirectRequest(Request):
    """A request from the web server: the response goes to it as a CGI head
    and STDOUT records, then END_REQUEST."""

    __slots__ = ("fd", "conn", "body", "rid", "summary", "started", "aborted", "gone", "sent_end")

    def __init__(self, conn, rid, summary):
        Request.__init__(self)
        self.fd = conn.fd
        self.conn = conn
        # Its DirectInput (set by the caller).
        self.body = None
        self.rid = rid
        self.summary = summary
        self.started = time.monotonic()
        # aborted: ABORT_REQUEST arrived, the response is dropped;
        # gone: the connection broke while we wrote.
        self.aborted = False
        self.gone = False
        self.sent_end = False

    def _head(self):
        """The CGI head (like ResponseHead::write_cgi in src/request.rs)."""
        if self.status is None:
            raise AssertionError("the application returned a body before calling start_response")
        lines = []
        if not self._local_redirect():
            lines.append("Status: " + self.status)
        for name, value in self.headers:
            lines.append(name + ": " + value)
        lines.append("\r\n")
        self.sent = True
        return "\r\n".join(lines).encode("latin-1")

    def _local_redirect(self):
        if self.status[:3] != "200":
            return False
        for name, value in self.headers:
            if name.lower() == "location":
                return value.startswith("/")
        return False

    PIECE_MAX = RECORD_MAX

    def _with_head(self, data):
        # The head goes in the same record as the first body bytes.
        return self._head() + data

    def _piece_header(self, length):
        return _rec_pack(1, _STDOUT, self.rid, length, 0)

    def flush(self):
        if not self.out:
            return
        if self.gone:
            self.out = bytearray()
            raise ClientGone()
        if not self.committed:
            self.body.spool_rest()
            if time.monotonic() - self.started > ABORT_CHECK_AFTER:
                self._check_abort()
        if self.aborted:
            self.out = bytearray()
            return
        if not self.committed and self.sent:
            SHARED[0] = _HEAD_SENT
        try:
            write_fd(self.fd, self.out)
        except OSError as e:
            self.gone = True
            self.out = bytearray()
            sys.stderr.write("fcgi-shim: the web server closed the connection during %s: %s; "
                             "response dropped\n" % (self.summary.decode("latin-1"), e.strerror))
            sys.stderr.flush()
            raise ClientGone()
        self.out = bytearray()
        self.committed = self.sent

    def _check_abort(self):
        """Before a slow request's response starts: did the web server abort
        it meanwhile (ABORT_REQUEST, or closing)? We do not read the connection
        while the application runs; this one look, without blocking, is what
        the shim's relay would have noticed."""
        conn = self.conn
        if not select.select([conn.fd], [], [], 0)[0]:
            return
        chunk = os.read(conn.fd, READ_SIZE)
        if not chunk:
            # Closed: the response has nowhere to go.
            conn.closed = True
            self.aborted = True
            return
        buf = conn.buf = conn.buf[conn.pos:] + chunk
        conn.pos = pos = 0
        # Complete records only; they stay in the buffer for the connection.
        while len(buf) - pos >= 8:
            _version, rtype, rid, length, padding = _rec_unpack_from(buf, pos)
            end = pos + 8 + length + padding
            if end > len(buf):
                break
            if rtype == _ABORT and rid == self.rid:
                self.aborted = True
            pos = end

    def finish(self):
        if self.gone:
            return
        rid = self.rid
        if self.aborted:
            # Only the END_REQUEST goes out.
            self.out = bytearray()
        elif not self.sent:
            head = self._head()
            self.out += _rec_pack(1, _STDOUT, rid, len(head), 0)
            self.out += head
        self.out += _rec_pack(1, _STDOUT, rid, 0, 0)
        self.out += _rec_pack(1, _END_REQUEST, rid, 8, 0)
        self.out += _END_BODY.pack(0, _REQUEST_COMPLETE)
        self.aborted = False
        self.flush()
        self.sent_end = True


# -- The environ: what src/request.rs for_each_application_meta_variable gives.

def _utf8(value):
    """A received value as Request::get sees it: None unless valid UTF-8."""
    if value is None or value.isascii():
        return value
    try:
        return value.encode("latin-1").decode("utf-8")
    except UnicodeDecodeError:
        return None


_HEX = frozenset("0123456789abcdefABCDEF")


def percent_decode(text):
    """%XX decoded (invalid escapes kept; invalid UTF-8 replaced), as
    percent_decode in src/request.rs (u8::from_str_radix takes "+F" too)."""
    if "%" not in text:
        return text
    data = text.encode("utf-8")
    out = bytearray()
    i, n = 0, len(data)
    while i < n:
        b = data[i]
        h = data[i + 1:i + 3]
        if b == 0x25 and len(h) == 2 and (
                (chr(h[0]) in _HEX or h[0] == 0x2B) and chr(h[1]) in _HEX):
            out.append(int(h.decode("ascii"), 16))
            i += 3
        else:
            out.append(b)
            i += 1
    return out.decode("utf-8", "replace")


def presented_script_name(get, fixed):
    """The SCRIPT_NAME to present instead of the one received (None: keep
    it), as presented_script_name in src/request.rs. `get(name)` is the last
    received value, if valid UTF-8; `fixed` the prefix, or None for auto."""
    script = get("SCRIPT_NAME") or ""
    if fixed is not None:
        wanted = fixed
    else:
        visited = get("REDIRECT_URL")
        if visited is None:
            visited = get("SCRIPT_URL")
        if not visited:
            uri = get("REQUEST_URI")
            if uri is None:
                return None
            visited = percent_decode(uri.split("?", 1)[0])
            if visited.startswith(script):
                return None
        path_info = get("PATH_INFO") or ""
        if path_info and visited.endswith(path_info):
            prefix = visited[:len(visited) - len(path_info)]
        else:
            # The rewrite changed the path: the directory of the script.
            prefix = script.rsplit("/", 1)[0] if "/" in script else ""
        wanted = prefix.rstrip("/")
    return None if wanted == script else wanted


def application_environ(params, fixed):
    """The environ's CGI part from a request's PARAMS bytes: HTTP_PROXY and
    an empty HTTP_AUTHORIZATION dropped, Authorization restored from
    REDIRECT_HTTP_AUTHORIZATION, SCRIPT_NAME presented as configured."""
    text = params.decode("latin-1")
    pairs = _name_values(text)
    environ = dict(pairs)

    def get(name):
        return _utf8(environ.get(name))

    script_name = presented_script_name(get, fixed)
    auth = get("HTTP_AUTHORIZATION")
    restored = None if auth else get("REDIRECT_HTTP_AUTHORIZATION")
    environ.pop("HTTP_PROXY", None)
    if environ.get("HTTP_AUTHORIZATION") == "":
        # Empty ones are dropped one by one: an earlier non-empty one stays.
        kept = [v for n, v in pairs if n == "HTTP_AUTHORIZATION" and v]
        if kept:
            environ["HTTP_AUTHORIZATION"] = kept[-1]
        else:
            del environ["HTTP_AUTHORIZATION"]
    if restored:
        environ["HTTP_AUTHORIZATION"] = restored.encode("utf-8").decode("latin-1")
    if script_name is not None:
        environ["SCRIPT_NAME"] = script_name.encode("utf-8").decode("latin-1")
    return environ


# -- Start-up of direct mode and the guardian.

_CLONE_FILES = 0x400
_SYS_CLONE = {"x86_64": 56, "aarch64": 220}
_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15


def _drain(fd):
    try:
        while os.read(fd, 512):
            pass
    except OSError:
        pass


class Direct:
    """What direct mode needs: the listening socket (non-blocking: it is
    polled first), the shim's inotify fd (readable: hand the socket back),
    the signal wake-up pipe, accept(), SCRIPT_NAME."""

    def __init__(self, listen_fd, wake_fd, script_name):
        self.listen_fd = listen_fd
        self.wake_fd = wake_fd
        # None: auto; else the fixed prefix.
        self.script_name = script_name
        os.set_blocking(listen_fd, False)
        self.signal_r, self.signal_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.poller = select.poll()
        for fd in (listen_fd, wake_fd, self.signal_r):
            if fd is not None:
                self.poller.register(fd, select.POLLIN)
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # accept4 from libc: one call, no socket object; the connection is
        # blocking (accept4 does not inherit the listener's O_NONBLOCK).
        accept4 = libc.accept4
        accept4.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int)
        accept4.restype = ctypes.c_int
        self._accept4 = accept4
        self._errno = ctypes.get_errno

    def accept(self):
        """A connection's fd, or minus the errno."""
        fd = self._accept4(self.listen_fd, None, None, _SOCK_CLOEXEC)
        return fd if fd >= 0 else -self._errno()


_SOCK_CLOEXEC = 0o2000000


def start_direct():
    """Read (and remove) the shim's direct-mode settings; if it asks for
    direct mode, start the guardian. A Direct, or None (one stderr line says
    why when it was asked for)."""
    global SHARED
    listen_fd = os.environ.pop("FCGI_SHIM_LISTEN_FD", None)
    wake_fd = os.environ.pop("FCGI_SHIM_WAKE_FD", None)
    timeout_ms = os.environ.pop("FCGI_SHIM_REQUEST_TIMEOUT_MS", None)
    script_name = os.environ.pop("FCGI_SHIM_SCRIPT_NAME", None) or "auto"
    if listen_fd is None:
        return None
    try:
        import ctypes
        import fcntl
        import mmap
        import platform

        fd = int(listen_fd)
        wake = int(wake_fd) if wake_fd else None
        for inherited in (fd, wake):
            if inherited is not None:
                fcntl.fcntl(inherited, fcntl.F_SETFD,
                            fcntl.fcntl(inherited, fcntl.F_GETFD) | fcntl.FD_CLOEXEC)
        timeout = int(timeout_ms or 0) / 1000.0
        fixed = script_name[6:] if script_name.startswith("fixed:") else None
        direct = Direct(fd, wake, fixed)
        number = _SYS_CLONE.get(platform.machine())
        if number is None:
            raise OSError("no clone() system call number for %s" % platform.machine())
        shared = mmap.mmap(-1, 4096, mmap.MAP_SHARED)
        worker = os.getpid()
        # As os.fork does around fork(): the GIL held (PyDLL), the
        # interpreter's locks taken, and the child's state reset.
        api = ctypes.pythonapi
        syscall = ctypes.PyDLL(None, use_errno=True).syscall
        syscall.restype = ctypes.c_long
        api.PyOS_BeforeFork()
        pid = syscall(ctypes.c_long(number), ctypes.c_long(_CLONE_FILES | signal.SIGCHLD),
                      ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0), ctypes.c_long(0))
        if pid == 0:
            # The guardian: it must never return into the adapter's flow.
            try:
                api.PyOS_AfterFork_Child()
                guardian(shared, worker, timeout)
            except BaseException:
                sys.stderr.write("fcgi-shim: the guardian failed:\n" + traceback.format_exc())
                sys.stderr.flush()
            finally:
                os._exit(0)
        api.PyOS_AfterFork_Parent()
        if pid < 0:
            raise OSError(ctypes.get_errno(), "clone: " + os.strerror(ctypes.get_errno()))
    except Exception as e:
        sys.stderr.write("fcgi-shim: direct mode unavailable: %s\n" % e)
        sys.stderr.flush()
        return None
    SHARED = shared
    return direct


def guardian(shared, worker, timeout):
    """The guardian's life: never returns. Shares the worker's fd table; runs
    none of the application's code (it was cloned before the import)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    waited = (signal.SIGUSR2, signal.SIGTERM)
    signal.pthread_sigmask(signal.SIG_BLOCK, waited + (signal.SIGUSR1, signal.SIGINT))
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGUSR2, 0, 0, 0)
    # Its name in ps -o comm and top (the command line stays the worker's).
    libc.prctl(_PR_SET_NAME, b"wsgi-guardian", 0, 0, 0)
    tick = max(0.01, min(1.0, timeout / 10)) if timeout > 0 else 1.0
    while os.getppid() == worker:
        signum = signal.sigtimedwait(waited, tick)
        if signum is not None and signum.si_signo == signal.SIGTERM:
            # The worker's end_group, or the shim's guard: the worker is going.
            deadline = time.monotonic() + 1.0
            while os.getppid() == worker and time.monotonic() < deadline:
                time.sleep(0.01)
            break
        if timeout > 0:
            state, _, _, start, sequence, _ = _STATE.unpack_from(shared, 0)
            if state != _IDLE and time.monotonic_ns() - start > timeout * 1e9:
                if stop_worker(shared, worker, sequence):
                    answer(shared, "timeout", 504, "Gateway Timeout")
    # The worker is gone (or going, after SIGTERM).
    answer(shared, "crash", 502, "Bad Gateway")


def _stopped(pid):
    try:
        with open("/proc/%d/stat" % pid, "rb") as f:
            stat = f.read()
    except OSError:
        return True
    return stat.rsplit(b")", 1)[-1].split()[:1] in ([b"T"], [b"t"], [b"Z"], [b"X"])


def stop_worker(shared, worker, sequence):
    """The request `sequence` is over time: stop the worker and kill it if
    that request is still in flight (True), else let it go on."""
    os.kill(worker, signal.SIGSTOP)
    deadline = time.monotonic() + 0.1
    while not _stopped(worker) and time.monotonic() < deadline:
        time.sleep(0.002)
    state, _, _, _, now_sequence, _ = _STATE.unpack_from(shared, 0)
    if state == _IDLE or now_sequence != sequence:
        os.kill(worker, signal.SIGCONT)
        return False
    os.kill(worker, signal.SIGKILL)
    deadline = time.monotonic() + 1.0
    while os.getppid() == worker and time.monotonic() < deadline:
        time.sleep(0.005)
    return True


def answer(shared, kind, status, reason):
    """The worker is gone: end the request in flight (if any) for the web
    server and tell the shim (frame X); then exit."""
    state, rid, fd, start, _, length = _STATE.unpack_from(shared, 0)
    if state == _IDLE:
        os._exit(0)
    seconds = (time.monotonic_ns() - start) / 1e9
    summary = bytes(shared[_SUMMARY_AT:_SUMMARY_AT + length])
    out = bytearray()
    if state == _BUSY:
        page = ("Status: %d %s\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n%d %s\n"
                % (status, reason, status, reason)).encode()
        out += _rec_pack(1, _STDOUT, rid, len(page), 0) + page
        out += _rec_pack(1, _STDOUT, rid, 0, 0)
        shown = str(status)
    else:
        shown = "cut"
    out += _end_request(rid, _REQUEST_COMPLETE)
    try:
        import fcntl

        # Never block on a web server that does not read.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_NONBLOCK)
        os.write(fd, out)
    except OSError:
        pass
    report = b"\0".join((kind.encode(), shown.encode(), summary, ("%.1f" % seconds).encode()))
    try:
        write_all(_pack(ord("X"), len(report)) + report)
    except OSError:
        pass
    os._exit(0)


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
    # SIGUSR1 ends a lend; at any other time it does nothing (and never
    # kills us).
    signal.signal(signal.SIGUSR1, lambda signum, frame: None)
    # Before the import: the guardian must run none of the application's code.
    direct = start_direct()
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
    if direct is not None:
        ready += b"\0direct"
    server = Server(app, debug, direct)
    signal.signal(signal.SIGUSR1, server.on_hand_back)
    write_all(_pack(ord("S"), len(ready)) + ready)
    server.serve()
    end_group()


sys.exit(main(sys.argv[2:]))
