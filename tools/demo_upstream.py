#!/usr/bin/env python3
"""apigw demo upstream: a small HTTP/1.1 backend for `make run` and the tests.

Standard library only.  HTTP/1.1 with keep-alive, every response framed with a
correct Content-Length (or chunked where asked for), request bodies read by
Content-Length or chunked transfer coding.

    python3 tools/demo_upstream.py --port 9090 [--host 127.0.0.1] [--verbose]

Endpoints (any of GET POST PUT PATCH DELETE HEAD OPTIONS unless noted):

  /echo...            200 JSON {"method","path","args","uri","headers":{lower
                      name: value, repeats joined with ", "},"header_list":
                      [[name,value],...],"body":<text>,"body_len","body_sha256"}
  /status/<code>      that status; query: shape=<s> (below), retry_after=<v>
                      (a Retry-After header), ctype=<v> (Content-Type), and
                      size=<n> for shape=big.  Shapes: json (default, a foreign
                      {"status","reason"}), html, text, empty, fastapi,
                      fastapi_str, message_errors, error_str, error_obj,
                      problem (application/problem+json), apigw (an apigw
                      error_object envelope without request_id), big (2 MiB
                      HTML), chunked (HTML, Transfer-Encoding: chunked),
                      hostile (JSON with escaped NUL, CR LF, quotes, <script>),
                      hostile_bytes (invalid UTF-8 and raw control bytes).
  /sleep/<ms>         sleeps (at most 120 s), then 200 {"slept_ms":ms}
  /ok                 200 {"ok":true} exactly
  /bytes/<n>          200, n deterministic bytes (see det_bytes), octet-stream
  /count/<name>       increments counter <name> (thread-safe) on arrival;
                      query: sleep=ms, status=code (default 201), size=n (pads
                      the JSON body to exactly n bytes).  Body {"name","n",
                      "body_sha256"}; headers Location: /things/<n>,
                      Set-Cookie: s=1, X-Custom: yes.
  GET /__counts       JSON {name: count}
  POST /__reset       clears the counters and the request log
  GET /__requests     JSON list of the last 1000 requests (method, uri,
                      headers, body_sha256), oldest first (not logged itself)
  /headers?h=N:V&..   200 {"ok":true} with those response headers; status=code.
                      Content-Length, Transfer-Encoding and Connection are
                      ignored (the framing stays correct).
Anything else: 404 text/plain.
"""

import argparse
import collections
import hashlib
import http
import json
import signal
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 64 * 1024 * 1024
MAX_SLEEP_MS = 120000
BIG_DEFAULT = 2 * 1024 * 1024

_lock = threading.Lock()
_counts = {}
_requests = collections.deque(maxlen=1000)


def det_bytes(n):
    """n deterministic, non-periodic bytes: SHA-256 of b"apigw" + 8-byte
    big-endian block number, concatenated.  The tests recompute this."""
    out = bytearray()
    i = 0
    while len(out) < n:
        out += hashlib.sha256(b"apigw" + i.to_bytes(8, "big")).digest()
        i += 1
    return bytes(out[:n])


def _j(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


# status -> (code, type) of the apigw catalog, for shape=apigw
_APIGW_CODES = {
    400: ("invalid_request", "invalid_request_error"),
    401: ("invalid_credentials", "authentication_error"),
    403: ("scope_required", "permission_error"),
    404: ("not_found", "not_found_error"),
    405: ("method_not_allowed", "invalid_request_error"),
    409: ("idempotency_key_in_progress", "invalid_request_error"),
    413: ("payload_too_large", "invalid_request_error"),
    415: ("unsupported_media_type", "invalid_request_error"),
    422: ("idempotency_key_mismatch", "invalid_request_error"),
    429: ("rate_limited", "rate_limit_error"),
    500: ("internal_error", "api_error"),
    502: ("upstream_unavailable", "api_error"),
    503: ("service_unavailable", "api_error"),
    504: ("upstream_timeout", "api_error"),
}


def _phrase(code):
    try:
        return http.HTTPStatus(code).phrase
    except ValueError:
        return "Unknown"


def _html_page(code):
    p = _phrase(code)
    return ("<!DOCTYPE html>\n<html><head><title>%d %s</title></head>\n"
            "<body><h1>%s</h1><p>The upstream could not handle the "
            "request.</p><hr><address>demo_upstream</address></body></html>\n"
            % (code, p, p)).encode()


def _big_html(size):
    head = b"<!DOCTYPE html>\n<html><body>\n"
    tail = b"</body></html>\n"
    if size <= len(head) + len(tail):
        return (head + tail)[:size]
    out = bytearray(head)
    i = 0
    while len(out) < size - len(tail):
        out += b"<p>filler line %08d of a large upstream error page</p>\n" % i
        i += 1
    del out[size - len(tail):]
    return bytes(out) + tail


def status_body(code, shape, size=BIG_DEFAULT):
    """-> (content_type or None, body bytes or list of chunks for chunked)"""
    ph = _phrase(code)
    if shape == "json":
        return "application/json", _j({"status": code, "reason": ph})
    if shape == "html":
        return "text/html; charset=utf-8", _html_page(code)
    if shape == "text":
        return "text/plain; charset=utf-8", ("%d %s\n" % (code, ph)).encode()
    if shape == "empty":
        return None, b""
    if shape == "fastapi":
        return "application/json", _j({"detail": [
            {"loc": ["body", "amount"], "msg": "field required",
             "type": "value_error.missing"}]})
    if shape == "fastapi_str":
        return "application/json", _j({"detail": "Item not found"})
    if shape == "message_errors":
        return "application/json", _j({
            "message": "Validation failed",
            "errors": [{"field": "email", "message": "is invalid"}]})
    if shape == "error_str":
        return "application/json", _j({
            "error": "card_declined", "message": "Your card was declined."})
    if shape == "error_obj":
        return "application/json", _j({"error": {
            "code": "card_declined", "message": "Your card was declined."}})
    if shape == "problem":
        return "application/problem+json", _j({
            "type": "https://example.com/probs/out-of-credit",
            "title": "You do not have enough credit.",
            "status": code,
            "detail": "Your current balance is 30, but that costs 50.",
            "code": "out_of_credit"})
    if shape == "apigw":
        c, t = _APIGW_CODES.get(code, ("internal_error", "api_error")
                                if code >= 500 else
                                ("invalid_request", "invalid_request_error"))
        return "application/json", _j({"error": {
            "type": t, "code": c, "message": "Upstream says: %s." % ph}})
    if shape == "big":
        return "text/html; charset=utf-8", _big_html(size)
    if shape == "chunked":
        page = _html_page(code)
        n = 4
        step = (len(page) + n - 1) // n
        return "text/html; charset=utf-8", [
            page[i:i + step] for i in range(0, len(page), step)]
    if shape == "hostile":
        return "application/json", json.dumps({
            "error": "x\u0000y",
            "message": "line1\r\nline2 \"quoted\" \\ back <script>"},
            separators=(",", ":")).encode()
    if shape == "hostile_bytes":
        return "application/json", (
            b'{"error":"bad_\xff\xfe_code","message":"caf\xc3 \xc0\xaf '
            b'over\xe2\x82 \xed\xa0\x80 nul\x00 esc\x1b[31m tab\t '
            b'\\"q\\" <script>"}')
    return None, None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "demo_upstream/1"
    sys_version = ""
    verbose = False

    def setup(self):
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP,
                                       socket.TCP_NODELAY, 1)
        except OSError:
            pass

    def log_message(self, fmt, *args):
        if self.verbose:
            sys.stderr.write("%s %s\n" % (self.address_string(), fmt % args))

    # -- request body ------------------------------------------------------

    def _read_body(self):
        te = self.headers.get("Transfer-Encoding", "")
        if "chunked" in te.lower():
            out = bytearray()
            while True:
                line = self.rfile.readline(65537)
                if not line:
                    raise ValueError("eof in chunk size")
                size = int(line.split(b";", 1)[0].strip(), 16)
                if size == 0:
                    while True:  # trailers
                        t = self.rfile.readline(65537)
                        if t in (b"\r\n", b"\n", b""):
                            break
                    return bytes(out)
                if len(out) + size > MAX_BODY:
                    raise ValueError("body too large")
                out += self.rfile.read(size)
                self.rfile.readline(3)  # CRLF after the chunk
        cl = self.headers.get("Content-Length")
        if cl is None:
            return b""
        n = int(cl)
        if n < 0 or n > MAX_BODY:
            raise ValueError("bad Content-Length")
        data = self.rfile.read(n)
        if len(data) != n:
            raise ValueError("short body")
        return data

    # -- response ----------------------------------------------------------

    def _send(self, code, body=b"", ctype=None, headers=(), chunks=None):
        no_body = (self.command == "HEAD" or code in (204, 304)
                   or 100 <= code < 200)
        out = ["HTTP/1.1 %d %s" % (code, _phrase(code)),
               "Server: demo_upstream",
               "Date: " + self.date_time_string()]
        if ctype:
            out.append("Content-Type: " + ctype)
        for k, v in headers:
            out.append("%s: %s" % (k, v))
        use_chunked = chunks is not None and self.request_version == "HTTP/1.1"
        if chunks is not None and not use_chunked:
            body = b"".join(chunks)  # an HTTP/1.0 client: length instead
        if use_chunked:
            out.append("Transfer-Encoding: chunked")
        elif code not in (204, 304) and not 100 <= code < 200:
            out.append("Content-Length: %d" % len(body))
        if self.close_connection:
            out.append("Connection: close")
        elif self.request_version == "HTTP/1.0":
            out.append("Connection: keep-alive")
        head = ("\r\n".join(out) + "\r\n\r\n").encode("latin-1")
        if use_chunked and not no_body:
            self.wfile.write(head)
            for c in chunks:
                if c:
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(c), c))
                    time.sleep(0.01)  # separate TCP segments
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.wfile.write(head if no_body else head + body)

    def _send_json(self, code, obj, headers=()):
        self._send(code, _j(obj), "application/json", headers)

    # -- dispatch ----------------------------------------------------------

    def _handle(self):
        try:
            body = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send(400, b"bad request body\n", "text/plain")
            return
        uri = self.path
        u = urllib.parse.urlsplit(uri)
        path, query = u.path, u.query
        q = urllib.parse.parse_qs(query, keep_blank_values=True)
        sha = hashlib.sha256(body).hexdigest()

        def qget(name, default=None):
            v = q.get(name)
            return v[-1] if v else default

        if path not in ("/__requests", "/__counts", "/__reset"):
            with _lock:
                _requests.append({
                    "method": self.command, "uri": uri,
                    "headers": {k.lower(): v for k, v in self.headers.items()},
                    "body_sha256": sha, "time": time.time()})

        try:
            if path.startswith("/echo"):
                hdrs, hlist = {}, []
                for k, v in self.headers.items():
                    lk = k.lower()
                    hlist.append([k, v])
                    hdrs[lk] = hdrs[lk] + ", " + v if lk in hdrs else v
                self._send_json(200, {
                    "method": self.command, "path": path, "args": query,
                    "uri": uri, "headers": hdrs, "header_list": hlist,
                    "body": body.decode("utf-8", "replace"),
                    "body_len": len(body), "body_sha256": sha})
            elif path.startswith("/status/"):
                code = int(path[len("/status/"):])
                if not 200 <= code <= 599:
                    raise ValueError("status out of range")
                shape = qget("shape", "json")
                size = int(qget("size", str(BIG_DEFAULT)))
                if not 0 <= size <= MAX_BODY:
                    raise ValueError("size out of range")
                ctype, payload = status_body(code, shape, size)
                if payload is None:
                    self._send(400, b"unknown shape\n", "text/plain")
                    return
                ctype = qget("ctype", ctype)
                extra = []
                ra = qget("retry_after")
                if ra is not None:
                    extra.append(("Retry-After", ra))
                if isinstance(payload, list):
                    self._send(code, ctype=ctype, headers=extra,
                               chunks=payload)
                else:
                    self._send(code, payload, ctype, extra)
            elif path.startswith("/sleep/"):
                ms = min(int(path[len("/sleep/"):]), MAX_SLEEP_MS)
                time.sleep(max(ms, 0) / 1000.0)
                self._send_json(200, {"slept_ms": ms})
            elif path == "/ok":
                self._send(200, b'{"ok":true}', "application/json")
            elif path.startswith("/bytes/"):
                n = int(path[len("/bytes/"):])
                if not 0 <= n <= MAX_BODY:
                    raise ValueError("size out of range")
                self._send(200, det_bytes(n), "application/octet-stream")
            elif path.startswith("/count/"):
                name = urllib.parse.unquote(path[len("/count/"):])
                with _lock:
                    n = _counts.get(name, 0) + 1
                    _counts[name] = n
                ms = min(int(qget("sleep", "0")), MAX_SLEEP_MS)
                if ms > 0:
                    time.sleep(ms / 1000.0)
                code = int(qget("status", "201"))
                obj = {"name": name, "n": n, "body_sha256": sha}
                data = _j(obj)
                want = qget("size")
                if want is not None:
                    want = int(want)
                    obj["pad"] = ""
                    base = len(_j(obj))
                    if want > MAX_BODY:
                        raise ValueError("size out of range")
                    if want >= base:
                        obj["pad"] = "x" * (want - base)
                        data = _j(obj)
                self._send(code, data, "application/json", [
                    ("Location", "/things/%d" % n), ("Set-Cookie", "s=1"),
                    ("X-Custom", "yes")])
            elif path == "/__counts":
                with _lock:
                    self._send_json(200, dict(_counts))
            elif path == "/__reset":
                if self.command != "POST":
                    self._send(405, b"POST only\n", "text/plain",
                               [("Allow", "POST")])
                    return
                with _lock:
                    _counts.clear()
                    _requests.clear()
                self._send_json(200, {"reset": True})
            elif path == "/__requests":
                with _lock:
                    self._send_json(200, list(_requests))
            elif path == "/headers":
                extra = []
                for h in q.get("h", []):
                    name, _, value = h.partition(":")
                    name, value = name.strip(), value.lstrip()
                    if (not name or any(c in h for c in "\r\n\0")
                            or any(c in name for c in " \t:")):
                        raise ValueError("bad header")
                    if name.lower() in ("content-length", "connection",
                                        "transfer-encoding"):
                        continue
                    extra.append((name, value))
                code = int(qget("status", "200"))
                self._send(code, b'{"ok":true}', "application/json", extra)
            else:
                self._send(404, ("no such endpoint: %s\n" % path).encode(),
                           "text/plain")
        except ValueError as e:
            self._send(400, ("bad request: %s\n" % e).encode(), "text/plain")

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = \
        do_OPTIONS = _handle


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512

    def handle_error(self, request, client_address):
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout, TimeoutError)):
            return  # the client (nginx) went away: normal in tests
        super().handle_error(request, client_address)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--port", type=int, default=9090)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--verbose", action="store_true",
                    help="log every request to stderr")
    a = ap.parse_args(argv)
    Handler.verbose = a.verbose

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    srv = Server((a.host, a.port), Handler)
    print("demo_upstream listening on http://%s:%d" % srv.server_address[:2],
          flush=True)
    try:
        srv.serve_forever(poll_interval=0.2)
    finally:
        srv.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
