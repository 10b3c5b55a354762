"""Tests of the harness itself, the demo upstream and tools/demo.py.  They
need no apigw module (plain nginx, module=False); the few that use the
module are skipped until it is built."""

import hashlib
import http.client
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import redis as redis_py
import requests

import harness
from harness import (Nginx, NginxError, RedisServer, HarnessError,
                     free_port, parse_raw_response, parse_raw_responses,
                     raw_request)

HERE = os.path.dirname(os.path.abspath(__file__))

needs_module = pytest.mark.skipif(not harness.module_built(),
                                  reason="module not built")

PROXY = """
server {
    listen 127.0.0.1:{port};
    location / {
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_pass http://127.0.0.1:{upstream_port};
    }
    location = /static { return 200 "v1\\n"; }
}
"""


def _get(port, path, method="GET", body=None, headers=None, timeout=10):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
    finally:
        c.close()


# -- free_port / wait_for ---------------------------------------------------

def test_free_port_is_free_and_unique():
    ports = {free_port() for _ in range(20)}
    assert len(ports) == 20
    assert not ports & {80, 6379, 8080, 6390, 9090, 9091}
    for p in ports:
        s = socket.socket()
        s.bind(("127.0.0.1", p))
        s.close()


def test_wait_for_is_bounded():
    t0 = time.monotonic()
    with pytest.raises(HarnessError, match="never"):
        harness.wait_for(lambda: False, 0.3, what="never")
    assert time.monotonic() - t0 < 2
    assert harness.wait_for(lambda: 42, 1) == 42


# -- demo upstream ----------------------------------------------------------

def test_upstream_ok_exact(upstream):
    st, h, body = _get(upstream.port, "/ok")
    assert (st, body) == (200, b'{"ok":true}')
    assert h["content-length"] == "11"
    assert h["content-type"] == "application/json"


@pytest.mark.parametrize("method", ["GET", "POST", "PUT", "PATCH", "DELETE"])
def test_upstream_echo(upstream, method):
    body = "héllo wörld".encode() if method != "GET" else None
    st, h, raw = _get(upstream.port, "/echo/a/b?x=1&y=2", method, body,
                      {"X-Request-Id": "abc", "Authorization": "Bearer k"})
    assert st == 200
    j = json.loads(raw)
    assert j["method"] == method
    assert j["path"] == "/echo/a/b"
    assert j["args"] == "x=1&y=2"
    assert j["headers"]["x-request-id"] == "abc"
    assert j["headers"]["authorization"] == "Bearer k"
    assert j["body"] == (body or b"").decode()
    assert j["body_sha256"] == hashlib.sha256(body or b"").hexdigest()
    assert int(h["content-length"]) == len(raw)


def test_upstream_head_and_keepalive(upstream):
    c = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        c.request("HEAD", "/echo")
        r = c.getresponse()
        assert r.status == 200 and r.read() == b""
        assert int(r.getheader("Content-Length")) > 0
        sock = c.sock
        c.request("GET", "/ok")
        r = c.getresponse()
        assert r.read() == b'{"ok":true}'
        assert c.sock is sock  # the same connection was kept alive
    finally:
        c.close()


def test_upstream_chunked_request_body(upstream):
    c = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    try:
        c.request("POST", "/echo", body=iter([b"abc", b"defg", b"h"]),
                  encode_chunked=True)
        j = json.loads(c.getresponse().read())
    finally:
        c.close()
    assert j["body"] == "abcdefgh"
    assert j["headers"]["transfer-encoding"] == "chunked"


SHAPES = {
    "json": ("application/json", {"status": 503,
                                  "reason": "Service Unavailable"}),
    "fastapi": ("application/json", {"detail": [
        {"loc": ["body", "amount"], "msg": "field required",
         "type": "value_error.missing"}]}),
    "fastapi_str": ("application/json", {"detail": "Item not found"}),
    "message_errors": ("application/json", {
        "message": "Validation failed",
        "errors": [{"field": "email", "message": "is invalid"}]}),
    "error_str": ("application/json", {
        "error": "card_declined", "message": "Your card was declined."}),
    "error_obj": ("application/json", {"error": {
        "code": "card_declined", "message": "Your card was declined."}}),
    "problem": ("application/problem+json", {
        "type": "https://example.com/probs/out-of-credit",
        "title": "You do not have enough credit.", "status": 503,
        "detail": "Your current balance is 30, but that costs 50.",
        "code": "out_of_credit"}),
    "hostile": ("application/json", {
        "error": "x\u0000y",
        "message": "line1\r\nline2 \"quoted\" \\ back <script>"}),
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_upstream_json_shapes(upstream, shape):
    ctype, want = SHAPES[shape]
    st, h, body = _get(upstream.port, "/status/503?shape=" + shape)
    assert st == 503
    assert h["content-type"] == ctype
    assert json.loads(body) == want


def test_upstream_text_shapes(upstream):
    st, h, body = _get(upstream.port, "/status/500?shape=html")
    assert st == 500 and h["content-type"].startswith("text/html")
    assert body.startswith(b"<!DOCTYPE html>") and b"Internal Server" in body
    st, h, body = _get(upstream.port, "/status/418?shape=text")
    assert st == 418 and body.startswith(b"418 ") and body.endswith(b"\n")
    assert h["content-type"].startswith("text/plain")
    st, h, body = _get(upstream.port, "/status/500?shape=empty")
    assert (st, body, h["content-length"]) == (500, b"", "0")
    assert "content-type" not in h
    st, h, body = _get(upstream.port, "/status/404?shape=apigw")
    j = json.loads(body)
    assert j == {"error": {"type": "not_found_error", "code": "not_found",
                           "message": j["error"]["message"]}}
    assert "request_id" not in j


def test_upstream_hostile_bytes_is_not_utf8(upstream):
    st, h, body = _get(upstream.port, "/status/502?shape=hostile_bytes")
    assert st == 502 and h["content-type"] == "application/json"
    with pytest.raises(UnicodeDecodeError):
        body.decode("utf-8")
    assert b"\x00" in body and b"\xff" in body


def test_upstream_big_and_size(upstream):
    st, h, body = _get(upstream.port, "/status/500?shape=big")
    assert st == 500 and len(body) == 2 * 1024 * 1024
    assert body.endswith(b"</body></html>\n")
    for n in (65535, 65536, 65537):
        st, h, body = _get(upstream.port, "/status/500?shape=big&size=%d" % n)
        assert len(body) == n == int(h["content-length"])


def test_upstream_chunked_shape(upstream):
    raw = raw_request(upstream.port, b"GET /status/500?shape=chunked "
                      b"HTTP/1.1\r\nHost: x\r\n\r\n")
    st, h, body = parse_raw_response(raw)
    assert st == 500 and h["transfer-encoding"] == ["chunked"]
    assert "content-length" not in h
    assert raw.count(b"\r\n35\r\n") >= 1  # several chunks
    assert body.startswith(b"<!DOCTYPE html>") and body.endswith(b"</html>\n")
    # an HTTP/1.0 client gets a Content-Length instead
    raw = raw_request(upstream.port, b"GET /status/500?shape=chunked "
                      b"HTTP/1.0\r\n\r\n")
    st, h, body2 = parse_raw_response(raw)
    assert "transfer-encoding" not in h and body2 == body


def test_upstream_retry_after_and_ctype(upstream):
    st, h, body = _get(upstream.port,
                       "/status/503?shape=text&retry_after=7&ctype=x/y")
    assert (st, h["retry-after"], h["content-type"]) == (503, "7", "x/y")


def test_upstream_sleep(upstream):
    t0 = time.monotonic()
    st, h, body = _get(upstream.port, "/sleep/300")
    assert st == 200 and json.loads(body) == {"slept_ms": 300}
    assert time.monotonic() - t0 >= 0.3


def test_upstream_bytes_deterministic(upstream):
    path = os.path.join(harness.ROOT, "tools", "demo_upstream.py")
    spec = importlib.util.spec_from_file_location("demo_upstream", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    for n in (0, 1, 31, 32, 33, 100000):
        st, h, body = _get(upstream.port, "/bytes/%d" % n)
        assert st == 200 and h["content-type"] == "application/octet-stream"
        assert body == harness.det_bytes(n) == mod.det_bytes(n)


def test_upstream_counting(upstream):
    upstream.reset()
    st, h, body = _get(upstream.port, "/count/a", "POST", b"x")
    assert st == 201
    assert json.loads(body) == {"name": "a", "n": 1, "body_sha256":
                                hashlib.sha256(b"x").hexdigest()}
    assert h["location"] == "/things/1"
    assert h["set-cookie"] == "s=1" and h["x-custom"] == "yes"
    st, h, body = _get(upstream.port, "/count/a?status=200&size=500", "PUT")
    assert st == 200 and len(body) == 500 and json.loads(body)["n"] == 2
    _get(upstream.port, "/count/b", "DELETE")
    assert upstream.counts() == {"a": 2, "b": 1}
    reqs = upstream.requests()
    assert [r["uri"] for r in reqs] == ["/count/a", "/count/a?status=200&"
                                        "size=500", "/count/b"]
    upstream.reset()
    assert upstream.counts() == {} and upstream.requests() == []


def test_upstream_counting_concurrent(upstream):
    seen, errors = [], []

    def one():
        try:
            st, h, body = _get(upstream.port, "/count/c?sleep=100", "POST")
            seen.append(json.loads(body)["n"])
        except Exception as e:  # noqa: BLE001
            errors.append(e)
    ts = [threading.Thread(target=one) for _ in range(20)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(20)
    assert not errors
    assert sorted(seen) == list(range(1, 21))
    assert upstream.counts() == {"c": 20}


def test_upstream_headers_endpoint(upstream):
    raw = raw_request(upstream.port, b"GET /headers?h=X-Request-Id:up-1&"
                      b"h=Set-Cookie:a=1&h=Set-Cookie:b=2&"
                      b"h=Content-Length:99&status=202 HTTP/1.1\r\n"
                      b"Host: x\r\n\r\n")
    st, h, body = parse_raw_response(raw)
    assert st == 202 and body == b'{"ok":true}'
    assert h["x-request-id"] == ["up-1"]
    assert h["set-cookie"] == ["a=1", "b=2"]
    assert h["content-length"] == ["11"]


def test_upstream_unknown_path(upstream):
    st, h, body = _get(upstream.port, "/nope")
    assert st == 404 and h["content-type"] == "text/plain"


def test_upstream_stop_start_same_port(upstream):
    port = upstream.port
    upstream.stop()
    assert not harness.port_open(port)
    upstream.start()
    assert upstream.port == port and _get(port, "/ok")[0] == 200
    upstream.kill()
    assert not upstream.running
    upstream.start()
    assert _get(port, "/ok")[0] == 200


# -- redis ------------------------------------------------------------------

def test_redis_basics_and_commandstats(redis):
    c = redis.client()
    assert c.ping()
    for i in range(3):
        c.set("k%d" % i, i)
    assert c.get("k1") == "1"
    stats = redis.commandstats()
    assert stats["set"] == 3 and stats["get"] == 1
    assert redis.addr == "127.0.0.1:%d" % redis.port


def test_redis_pause_resume(redis):
    c = redis.client(socket_timeout=0.3)
    c.set("a", "1")
    redis.pause()
    try:
        with pytest.raises(redis_py.exceptions.TimeoutError):
            c.get("a")
        assert not redis.ping()
    finally:
        redis.resume()
    c2 = redis.client()
    assert c2.get("a") == "1"


def test_redis_kill_and_restart(redis):
    port, pid = redis.port, redis.pid
    redis.client().set("a", "1")
    redis.kill()
    assert not redis.running and not redis.ping()
    with pytest.raises(redis_py.exceptions.ConnectionError):
        redis.client().ping()
    redis.restart()
    assert redis.port == port and redis.pid != pid and redis.ping()
    assert redis.client().get("a") is None  # no persistence
    redis.restart()  # from running, too
    assert redis.ping()


def test_redis_stop_while_paused(tmp_path):
    r = RedisServer(tmp_path / "r").start()
    r.pause()
    t0 = time.monotonic()
    r.stop()
    assert not r.running and time.monotonic() - t0 < 8


def test_redis_unix_socket_and_password(tmp_path):
    r = RedisServer(tmp_path / "r", unix_socket=True, password="pw").start()
    try:
        assert r.addr == "unix:" + r.unix_path
        c = redis_py.Redis(unix_socket_path=r.unix_path, password="pw",
                           socket_timeout=2)
        assert c.ping()
        with pytest.raises((redis_py.exceptions.AuthenticationError,
                            redis_py.exceptions.ResponseError)):
            redis_py.Redis(host="127.0.0.1", port=r.port, password="bad",
                           socket_timeout=2).ping()
    finally:
        r.stop()


# -- nginx ------------------------------------------------------------------

def test_nginx_plain_proxy(nginx_factory, upstream):
    n = nginx_factory(PROXY, module=False, upstream=upstream)
    assert n.running and len(n.worker_pids()) == 1
    r = requests.post(n.url("/echo/x?q=1"), data=b"body",
                      headers={"X-Request-Id": "r-1"}, timeout=10)
    j = r.json()
    assert r.status_code == 200 and j["path"] == "/echo/x" and \
        j["args"] == "q=1" and j["headers"]["x-request-id"] == "r-1" and \
        j["body"] == "body"
    # byte-for-byte pass-through of a large body (buffered to a temp file)
    r = requests.get(n.url("/bytes/3000000"), timeout=10)
    assert r.content == harness.det_bytes(3000000)
    # an upstream error passes untouched without the module
    r = requests.get(n.url("/status/500?shape=html"), timeout=10)
    assert r.status_code == 500 and r.text.startswith("<!DOCTYPE html>")
    r = requests.get(n.url("/status/502?shape=chunked"), timeout=10)
    assert r.status_code == 502 and r.text.endswith("</html>\n")
    line = n.wait_log(r'"GET /status/502\?shape=chunked HTTP/1.1" 502')
    assert "rid=" not in line  # the module's variables only with the module


def test_nginx_workers_reload_stop(nginx_factory, upstream):
    n = nginx_factory(PROXY, module=False, upstream=upstream,
                      worker_processes=2)
    old = n.worker_pids()
    assert len(old) == 2
    assert requests.get(n.url("/static"), timeout=5).text == "v1\n"
    n.reload(PROXY.replace('"v1\\n"', '"v2\\n"'))
    new = n.worker_pids()
    assert len(new) == 2 and not set(new) & set(old)
    assert requests.get(n.url("/static"), timeout=5).text == "v2\n"
    master = n.pid
    assert n.stop() == 0
    assert not n.running and not harness.port_open(n.port)
    for pid in [master] + new:
        assert not os.path.exists("/proc/%d" % pid) or \
            b"nginx" not in open("/proc/%d/cmdline" % pid, "rb").read()
    n.start()  # again, same port
    assert requests.get(n.url("/static"), timeout=5).text == "v2\n"


def test_nginx_reload_refused(nginx_factory, upstream):
    n = nginx_factory(PROXY, module=False, upstream=upstream)
    n.allow_log(r"\[emerg\].*no_such_directive")
    with pytest.raises(NginxError, match="no_such_directive"):
        n.reload("no_such_directive 1;\n" + PROXY)
    # the old workers still serve
    assert requests.get(n.url("/static"), timeout=5).text == "v1\n"


def test_nginx_test_config_and_bad_start(nginx_factory, tmp_path):
    good = Nginx(tmp_path / "good", "server { listen 127.0.0.1:{port}; }",
                 module=False)
    rc, out = good.test_config()
    assert rc == 0 and "syntax is ok" in out
    bad = nginx_factory("server { listen 127.0.0.1:{port}; bogus 1; }",
                        start=False, module=False)
    rc, out = bad.test_config()
    assert rc != 0 and 'unknown directive "bogus"' in out
    bad.allow_log(r'\[emerg\].*unknown directive "bogus"')
    with pytest.raises(NginxError) as e:
        bad.start()
    assert 'unknown directive "bogus"' in str(e.value)
    assert not bad.running


def test_nginx_placeholders(nginx_factory, tmp_path):
    conf = """
    server {
        listen 127.0.0.1:{port};
        location = /t { return 200 "{tmp} {greeting} ${uri}\\n"; }
    }
    """
    n = nginx_factory(conf, module=False, vars={"greeting": "hi"})
    r = requests.get(n.url("/t"), timeout=5)
    assert r.text == "%s hi /t\n" % n.dir
    with pytest.raises(HarnessError, match=r"\{redis_port\}"):
        Nginx(tmp_path / "x", "# {redis_port}", module=False).render()
    # nginx's own braces and ${var} are left alone
    text = Nginx(tmp_path / "y", "location ~ ^/a{2}$ { set $a ${b}; }",
                 module=False, redis=6390).render()
    assert "location ~ ^/a{2}$ { set $a ${b}; }" in text
    unix = RedisServer(tmp_path / "r", unix_socket=True)
    text = Nginx(tmp_path / "z", "apigw_redis {redis_addr}; # {dead_port}",
                 module=False, redis=unix).render()
    assert "apigw_redis unix:%s;" % unix.unix_path in text


def test_nginx_module_flag_in_config(tmp_path):
    text = Nginx(tmp_path / "n", "", module=False).render()
    assert "load_module" not in text and "$apigw" not in text
    assert "daemon off;" in text and "master_process on;" in text
    if harness.module_built():
        text = Nginx(tmp_path / "m", "").render()
        assert "load_module %s;" % harness.MODULE in text
        assert "$apigw_request_id" in text and "$apigw_error_code" in text
    else:
        with pytest.raises(HarnessError, match="module not built"):
            Nginx(tmp_path / "m", "")


# -- raw requests -----------------------------------------------------------

def test_raw_request_against_nginx(nginx_factory, upstream):
    n = nginx_factory(PROXY, module=False, upstream=upstream)
    raw = raw_request(n.port, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n")
    assert parse_raw_response(raw) == (
        200, parse_raw_response(raw)[1], b'{"ok":true}')
    # a malformed request line: nginx answers 400 and closes
    st, h, body = parse_raw_response(raw_request(
        n.port, b"GARBAGE\x01 / HTTP/9.9\r\n\r\n"))
    assert st == 400
    # a hostile header that requests would refuse to send
    st, h, body = parse_raw_response(raw_request(
        n.port, b"GET /ok HTTP/1.1\r\nHost: a\r\nX-Bad\x00: v\r\n\r\n"))
    assert st == 400
    # chunked through nginx, and HEAD
    st, h, body = parse_raw_response(raw_request(
        n.port, b"GET /status/500?shape=chunked HTTP/1.1\r\nHost: a\r\n\r\n"))
    assert st == 500 and body.endswith(b"</html>\n")
    raw = raw_request(n.port, b"HEAD /echo HTTP/1.1\r\nHost: a\r\n\r\n")
    st, h, body = parse_raw_response(raw, head_request=True)
    assert st == 200 and body == b"" and int(h["content-length"][0]) > 0
    # pipelining: two answers, read until nginx closes
    raw = raw_request(n.port, b"GET /ok HTTP/1.1\r\nHost: a\r\n\r\n"
                      b"GET /static HTTP/1.1\r\nHost: a\r\n"
                      b"Connection: close\r\n\r\n", until_close=True)
    rs = parse_raw_responses(raw)
    assert [(r[0], r[2]) for r in rs] == [(200, b'{"ok":true}'),
                                         (200, b"v1\n")]


def test_raw_request_timeout_and_silence():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    try:
        t0 = time.monotonic()
        assert raw_request(srv.getsockname()[1], b"GET / HTTP/1.1\r\n\r\n",
                           timeout=0.5) == b""
        assert time.monotonic() - t0 < 2
    finally:
        srv.close()


def test_parse_raw_response_forms():
    st, h, b = parse_raw_response(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\n"
        b"Transfer-Encoding: chunked\r\nSet-Cookie: a\r\nset-cookie: b\r\n"
        b"\r\n3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\n\r\n")
    assert (st, h["set-cookie"], b) == (201, ["a", "b"], b"abcde")
    st, h, b = parse_raw_response(b"HTTP/1.0 200 OK\r\n\r\nuntil close")
    assert b == b"until close"
    rs = parse_raw_responses(b"HTTP/1.1 204 No Content\r\n\r\n"
                             b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    assert [(r[0], r[2]) for r in rs] == [(204, b""), (200, b"ok")]
    with pytest.raises(ValueError):
        parse_raw_response(b"")


# -- the crash guard ----------------------------------------------------------

def test_guard_detects_planted_crash(nginx_factory):
    n = nginx_factory("server { listen 127.0.0.1:{port}; }", module=False)
    assert n.log_problems() == []
    with open(n.error_log_path, "a") as f:
        f.write("2026/01/01 00:00:00 [alert] 1#1: worker process 2 exited "
                "on signal 11 (core dumped)\n")
        f.write("2026/01/01 00:00:00 [emerg] 1#1: something\n")
        f.write("2026/01/01 00:00:00 [error] 1#1: not a problem\n")
    assert len(n.log_problems()) == 2
    with pytest.raises(AssertionError, match="exited on signal 11"):
        harness.check_instances([n])
    n.allow_log("exited on signal 11")
    n.allow_log(r"\[emerg\] .*something")
    assert n.log_problems() == []
    harness.check_instances([n])


def test_guard_reports_sanitizer_files(nginx_factory):
    """make test-asan: an ASan/UBSan report file in the nginx's dir fails
    the test, whatever allow_log() says."""
    n = nginx_factory("server { listen 127.0.0.1:{port}; }", module=False)
    assert n.sanitizer_reports() == []
    with open(os.path.join(n.dir, "asan.4242"), "w") as f:
        f.write("==4242==ERROR: AddressSanitizer: heap-buffer-overflow\n")
    with open(os.path.join(n.dir, "asan.txt"), "w") as f:
        f.write("not a report: no pid suffix\n")
    n.allow_log(".")
    assert [os.path.basename(p) for p, _ in n.sanitizer_reports()] == [
        "asan.4242"]
    with pytest.raises(AssertionError, match="heap-buffer-overflow"):
        harness.check_instances([n])
    os.unlink(os.path.join(n.dir, "asan.4242"))
    harness.check_instances([n])


def test_guard_fails_a_test_end_to_end(tmp_path):
    """The autouse guard, run by pytest itself on two planted tests."""
    shutil.copy(os.path.join(HERE, "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_planted.py").write_text('''
def plant(n):
    with open(n.error_log_path, "a") as f:
        f.write("[alert] 1#1: worker process 9 exited on signal 11\\n")

def test_crash(nginx_factory):
    plant(nginx_factory("server { listen 127.0.0.1:{port}; }", module=False))

def test_allowed(nginx_factory):
    n = nginx_factory("server { listen 127.0.0.1:{port}; }", module=False)
    n.allow_log("exited on signal")
    plant(n)
''')
    env = dict(os.environ, APIGW_ROOT=harness.ROOT,
               PYTHONPATH=HERE + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([harness.PYTHON, "-m", "pytest", "-q",
                        "-p", "no:cacheprovider", "-o", "addopts=",
                        "--basetemp", str(tmp_path / "inner"),
                        str(tmp_path)], cwd=str(tmp_path), env=env,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=120)
    out = p.stdout.decode()
    assert p.returncode != 0, out
    assert "2 passed, 1 error" in out, out
    assert "ERROR at teardown of test_crash" in out, out
    assert "exited on signal 11" in out, out


# -- conf-examples and tools/demo.py ----------------------------------------

def test_example_rewrite(tmp_path):
    n = Nginx.from_example("demo", tmp_path / "d", port=1111, redis=2222,
                           upstream=3333, dead_port=4444, module=False)
    text = n.render()
    assert "listen 127.0.0.1:1111;" in text
    assert "127.0.0.1:2222" in text and "127.0.0.1:3333" in text
    assert "127.0.0.1:4444" in text
    for lit in (":8080", ":6390", ":9090", ":9091"):
        assert "127.0.0.1" + lit not in text
    assert "\nload_module" not in text and "$apigw" not in text
    assert "# (without module) apigw on;" in text
    # the Dockerfile's --listen 0.0.0.0:8080
    with open(os.path.join(harness.EXAMPLES, "demo.conf")) as f:
        text = harness.exampleconf.rewrite(f.read(), port=8080,
                                           listen_host="0.0.0.0")
    assert "listen 0.0.0.0:8080;" in text


def test_demo_conf_skeleton_runs_without_module(nginx_factory, upstream):
    """The demo config minus the module: the routing of the demo works."""
    n = nginx_factory.example("demo", module=False, upstream=upstream,
                              redis=free_port())
    assert len(n.worker_pids()) == 2
    assert requests.get(n.url("/api/ok"), timeout=5).text == '{"ok":true}'
    assert requests.get(n.url("/nope"), timeout=5).status_code == 404
    assert requests.get(n.url("/down/"), timeout=5).status_code == 502
    assert requests.get(n.url("/slow/1500"), timeout=5).status_code == 504
    st, h, body = parse_raw_response(raw_request(
        n.port, b"POST /api/echo HTTP/1.1\r\nHost: a\r\n"
        b"Content-Length: 2000000\r\n\r\n"))
    assert st == 413


@needs_module
def test_demo_conf_starts_with_module(nginx_factory, upstream, redis):
    n = nginx_factory.example("demo", upstream=upstream, redis=redis)
    r = requests.get(n.url("/api/echo"), timeout=5)
    assert r.status_code == 200
    assert r.headers.get("X-Request-Id")
    assert r.json()["headers"]["x-request-id"] == r.headers["X-Request-Id"]
    r = requests.get(n.url("/nope"), timeout=5)
    assert r.status_code == 404
    assert r.json()["error"]["code"] == "not_found"


def _run_demo(tmp_path, extra, wait_ready=True):
    ports = dict(listen=free_port(), redis=free_port(),
                 upstream=free_port(), dead=free_port())
    argv = [harness.PYTHON, os.path.join(harness.ROOT, "tools", "demo.py"),
            "--listen", "127.0.0.1:%d" % ports["listen"],
            "--redis-port", str(ports["redis"]),
            "--upstream-port", str(ports["upstream"]),
            "--dead-port", str(ports["dead"]),
            "--tmpdir", str(tmp_path)] + extra
    out = open(tmp_path / "demo.out", "wb")
    p = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()
    return p, ports


def _demo_output(tmp_path):
    return (tmp_path / "demo.out").read_text(errors="replace")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_demo_script_starts_and_stops_everything(tmp_path, sig):
    extra = [] if harness.module_built() else ["--without-module"]
    p, ports = _run_demo(tmp_path, extra)
    try:
        harness.wait_for(lambda: "apigw demo ready" in _demo_output(tmp_path)
                         or p.poll() is not None, 30, what="demo ready")
        out = _demo_output(tmp_path)
        assert p.poll() is None, out
        base = "http://127.0.0.1:%d" % ports["listen"]
        assert "curl -i %s/nope" % base in out
        assert requests.get(base + "/api/ok", timeout=5).status_code == 200
        assert requests.get(base + "/down/", timeout=5).status_code == 502
        assert harness.port_open(ports["redis"])
        assert harness.port_open(ports["upstream"])
        p.send_signal(sig)
        assert p.wait(timeout=30) == 0, _demo_output(tmp_path)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(5)
    for port in ports["listen"], ports["redis"], ports["upstream"]:
        assert not harness.port_open(port), _demo_output(tmp_path)
    assert "demo: stopped" in _demo_output(tmp_path)
    assert not list(tmp_path.glob("apigw-demo-*"))  # removed after a clean stop


def test_demo_script_fails_when_a_port_is_taken(tmp_path):
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    try:
        extra = ["--without-module", "--redis-port",
                 str(busy.getsockname()[1])]
        p, ports = _run_demo(tmp_path, extra)
        assert p.wait(timeout=30) == 1
    finally:
        busy.close()
    out = _demo_output(tmp_path)
    assert "FAILED" in out and "in use" in out
    assert not harness.port_open(ports["upstream"])


def test_demo_script_fails_when_nginx_config_is_bad(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("events {}\nhttp { bogus_directive; }\n")
    p, ports = _run_demo(tmp_path, ["--without-module", "--conf", str(conf)])
    assert p.wait(timeout=30) == 1
    out = _demo_output(tmp_path)
    assert "nginx -t rejected" in out and "bogus_directive" in out
    assert "logs kept in %s/apigw-demo-" % tmp_path in out
    # redis and the upstream it had started are stopped again
    assert not harness.port_open(ports["redis"])
    assert not harness.port_open(ports["upstream"])
