"""Every request form is safe with every feature (issue 12, items 3 and 4):
HTTP/0.9 (whose header list nginx never initialises), HTTP/1.0 without
Host, HTTP/1.1, h2; a bounded run of hostile raw requests; identity headers
spoofed with underscores and any case.  The autouse guard fails a test whose
error log shows a worker crash."""

import hashlib
import json
import pathlib
import random
import shutil
import subprocess

import pytest
import requests

from harness import free_port, parse_raw_response, raw_request

KEY = "live_" + "F" * 40

CONF = """
apigw on;
apigw_redis 127.0.0.1:{redis_port} timeout=300ms;
apigw_auth_cache zone=keys:1m ttl=30s negative_ttl=5s;
apigw_rate_limit_zone per_ip rate=100r/s burst=100 key=$binary_remote_addr;
underscores_in_headers on;

server {
    listen 127.0.0.1:{port};
    listen 127.0.0.1:{h2_port} http2;
    root {tmp};

    location /static/ {
    }
    location /proxied/ {
        proxy_pass http://127.0.0.1:{upstream_port}/echo/;
    }
    location /auth/ {
        apigw_auth on;
        proxy_pass http://127.0.0.1:{upstream_port}/echo/;
    }
    location /custom/ {
        apigw_auth on;
        apigw_auth_header X-Api-Key;
        proxy_pass http://127.0.0.1:{upstream_port}/echo/;
    }
    location /limited/ {
        apigw_rate_limit per_ip;
        proxy_pass http://127.0.0.1:{upstream_port}/echo/;
    }
    location /idem/ {
        apigw_idempotency on;
        apigw_idempotency_methods GET POST;
        proxy_pass http://127.0.0.1:{upstream_port}/echo/;
    }
}
"""

PATHS = ["/static/", "/static/missing", "/proxied/x", "/auth/x", "/limited/x",
         "/idem/x"]


@pytest.fixture
def gw(nginx_factory, redis, upstream):
    h = "apigw:key:" + hashlib.sha256(KEY.encode()).hexdigest()
    redis.client().hset(h, mapping={
        "key_id": "key_f", "tenant": "acme", "scopes": "read",
        "status": "active", "account_status": "active"})
    h2_port = free_port()
    n = nginx_factory(CONF, redis=redis, upstream=upstream,
                      vars={"h2_port": h2_port}, start=False)
    static = pathlib.Path(n.dir) / "static"
    static.mkdir()
    (static / "index.html").write_text("static index\n")
    n.start()
    n.h2_port = h2_port
    return n


@pytest.mark.parametrize("path", PATHS)
def test_http09(gw, path):
    data = raw_request(gw.port, b"GET " + path.encode() + b"\r\n",
                       until_close=True)
    # HTTP/0.9 has no status line and no headers: the body alone
    assert not data.startswith(b"HTTP/"), data[:100]
    assert data, path
    if path == "/auth/x":
        assert json.loads(data)["error"]["code"] == "missing_credentials"
    if path == "/static/missing":
        assert json.loads(data)["error"]["code"] == "not_found"
    if path in ("/proxied/x", "/limited/x", "/idem/x"):
        seen = json.loads(data)["headers"]
        assert seen["x-request-id"].startswith("req_")


@pytest.mark.parametrize("path", PATHS)
def test_http10_without_host(gw, path):
    data = raw_request(gw.port, b"GET " + path.encode() +
                       b" HTTP/1.0\r\nAuthorization: Bearer " +
                       KEY.encode() + b"\r\n\r\n", until_close=True)
    status, headers, body = parse_raw_response(data)
    assert status in (200, 404), data[:300]
    assert len(headers["x-request-id"]) == 1
    if status == 404:
        assert json.loads(body)["error"]["code"] == "not_found"


def test_http11_without_host_is_an_envelope(gw):
    data = raw_request(gw.port, b"GET /auth/x HTTP/1.1\r\n\r\n",
                       until_close=True)
    status, headers, body = parse_raw_response(data)
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_request"
    assert headers["content-type"] == ["application/json"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
@pytest.mark.parametrize("path", PATHS)
def test_h2(gw, path):
    url = "http://127.0.0.1:%d%s" % (gw.h2_port, path)
    out = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "--max-time", "5",
         "-o", "/dev/null", "-w", "%{http_code}", "-H",
         "Authorization: Bearer " + KEY, url],
        stdout=subprocess.PIPE, check=True).stdout
    assert out in (b"200", b"404"), (path, out)


def test_identity_headers_spoofed_with_underscores(gw, upstream):
    spoof = {"X_Apigw_Tenant": "evil", "x_apigw_key_id": "evil",
             "X-APIGW-SCOPES": "admin", "X_APIGW_SCOPES": "admin",
             "x-Apigw_Tenant": "evil"}
    for path, auth in (("/proxied/x", False), ("/auth/x", True)):
        h = dict(spoof)
        if auth:
            h["Authorization"] = "Bearer " + KEY
        r = requests.get(gw.url(path), headers=h)
        assert r.status_code == 200, r.content
        seen = r.json()["header_list"]
        names = [k.lower().replace("_", "-") for k, _ in seen]
        values = dict((k.lower().replace("_", "-"), v) for k, v in seen)
        for name in ("x-apigw-tenant", "x-apigw-key-id", "x-apigw-scopes"):
            assert names.count(name) == (1 if auth else 0), (path, seen)
        if auth:
            assert values["x-apigw-tenant"] == "acme"
            assert values["x-apigw-key-id"] == "key_f"
            assert values["x-apigw-scopes"] == "read"
        assert "evil" not in json.dumps(seen)


def test_credential_removed_whatever_its_spelling(gw):
    r = requests.get(gw.url("/custom/x"),
                     headers={"X-Api-Key": KEY, "X_Api_Key": "other",
                              "x_api_KEY": "third"})
    assert r.status_code == 200, r.content
    seen = r.json()["header_list"]
    assert not [k for k, _ in seen
                if k.lower().replace("_", "-") == "x-api-key"], seen


def hostile_requests(seed, n):
    rnd = random.Random(seed)
    methods = [b"GET", b"POST", b"HEAD", b"PUT", b"\x00", b"G ET", b"",
               b"PATCH", b"OPTIONS", b"CONNECT"]
    versions = [b"", b" HTTP/0.9", b" HTTP/1.0", b" HTTP/1.1", b" HTTP/2.0",
                b" HTTP/9.9", b" HTTP/1.1\x00", b" http/1.1"]
    extra = [b"Host: t", b"Host:", b"Host: a\x00b", b"Authorization: Bearer",
             b"Authorization: Bearer " + b"x" * 5000,
             b"Authorization: Bearer " + KEY.encode(),
             b"X-Request-Id: " + b"a" * 200, b"X-Request-Id: \xff\xfe",
             b"Idempotency-Key: \"k\"", b"Idempotency-Key: " + b"k" * 300,
             b"X_Apigw_Tenant: evil", b"Content-Length: -1",
             b"Content-Length: 5", b"Transfer-Encoding: chunked",
             b"Transfer-Encoding: gzip", b": novalue", b"Bad Header: x",
             b"X-Long: " + b"y" * 9000, b"Expect: 100-continue"]
    for _ in range(n):
        path = rnd.choice(PATHS).encode() + rnd.choice(
            [b"", b"?a=1", b"/../../etc/passwd", b"%00", b"%zz", b"#x",
             b"?" + b"q" * 3000])
        line = rnd.choice(methods) + b" " + path + rnd.choice(versions)
        hdrs = rnd.sample(extra, rnd.randint(0, 5))
        body = rnd.choice([b"", b"hello", b"5\r\nhello\r\n0\r\n\r\n"])
        yield line + b"\r\n" + b"".join(h + b"\r\n" for h in hdrs) + \
            b"\r\n" + body


def test_hostile_raw_requests(gw):
    """A few hundred generated malformed requests: no worker crash, and an
    error response with a status line is a JSON envelope."""
    checked = 0
    for data in hostile_requests(12, 300):
        out = raw_request(gw.port, data, timeout=2.0, until_close=True)
        if not out.startswith(b"HTTP/1."):
            continue
        head, _, body = out.partition(b"\r\n\r\n")
        status = int(head.split()[1])
        if status >= 400 and body and b"Transfer-Encoding" not in head:
            json.loads(body.split(b"HTTP/1.")[0])
            checked += 1
    assert checked > 50
    assert gw.running
    r = requests.get(gw.url("/auth/x"),
                     headers={"Authorization": "Bearer " + KEY})
    assert r.status_code == 200
