"""HTTP/2 (h2c): the request's connection is a fake one (fd -1); envelopes,
request ids and a Redis wait (auth) must work there too."""

import hashlib
import json
import shutil
import subprocess

import pytest

KEY = "live_" + "H" * 40

CONF = """
apigw on;
apigw_redis 127.0.0.1:{redis_port};
server {
    listen 127.0.0.1:{port} http2;
    location /api/ {
        apigw_auth on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
"""

pytestmark = pytest.mark.skipif(shutil.which("curl") is None,
                                reason="curl not installed")


def h2(url, *headers):
    argv = ["curl", "-s", "--http2-prior-knowledge", "-D", "-",
            "--max-time", "5", url]
    for h in headers:
        argv[1:1] = ["-H", h]
    out = subprocess.run(argv, stdout=subprocess.PIPE, check=True).stdout
    head, _, body = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    status = int(lines[0].split()[1])
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    return lines[0], status, hdrs, body


def test_h2_envelopes_and_auth(nginx_factory, redis, upstream):
    n = nginx_factory(CONF, redis=redis, upstream=upstream)
    proto, status, hdrs, body = h2(n.url("/nowhere"), "X-Request-Id: h2-1")
    assert proto.startswith("HTTP/2")
    assert status == 404
    assert hdrs["x-request-id"] == "h2-1"
    assert json.loads(body)["error"]["code"] == "not_found"
    assert int(hdrs["content-length"]) == len(body)

    _, status, _, body = h2(n.url("/api/echo"))
    assert status == 401
    assert json.loads(body)["error"]["code"] == "missing_credentials"

    redis.client().hset("apigw:key:" + hashlib.sha256(KEY.encode())
                        .hexdigest(), mapping={
                            "key_id": "k", "tenant": "t", "scopes": "",
                            "status": "active"})
    # HTTP/2 names arrive lowercase and nginx points lowcase_key at them:
    # the credential and a forged identity still never pass
    _, status, _, body = h2(n.url("/api/echo"),
                            "Authorization: Bearer " + KEY,
                            "X-Apigw-Tenant: evil", "X-Apigw-Scopes: admin",
                            "X-Request-Id: h2-2")
    assert status == 200
    seen = json.loads(body)["headers"]
    assert seen["x-apigw-tenant"] == "t"
    assert seen["x-apigw-scopes"] == ""
    assert seen["x-apigw-key-id"] == "k"
    assert seen["x-request-id"] == "h2-2"
    assert "authorization" not in seen
    assert KEY not in body.decode()

    redis.pause()
    try:
        _, status, hdrs, body = h2(n.url("/api/echo"),
                                   "Authorization: Bearer " + KEY + "x")
        assert status == 503
        assert json.loads(body)["error"]["code"] == "auth_unavailable"
    finally:
        redis.resume()
    n.allow_log(r"redis")
