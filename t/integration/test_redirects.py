"""Checks follow the location that serves the request (issue 12, items 1, 2
and 5): after try_files, error_page, X-Accel-Redirect, rewrite ... last and
named locations the final location's auth, scopes, rate limits and
idempotency apply; a policy charges a request once; a key is claimed once;
the operator's error_page is served as configured; subrequests (auth_request,
mirror) into protected locations never carry an unchecked credential or
identity.  Every test here fails on the code before the location passes."""

import hashlib
import json
import pathlib

import requests

from harness import wait_for

ADMIN = "live_" + "A" * 40
READER = "live_" + "R" * 40

CONF = r"""
apigw on;
apigw_redis 127.0.0.1:{redis_port} timeout=300ms connect_timeout=300ms;
apigw_auth_cache zone=keys:1m ttl=30s negative_ttl=5s;
apigw_rate_limit_zone per_tenant rate=3r/m burst=3;
apigw_rate_limit_zone per_ip rate=2r/m burst=2 key=$binary_remote_addr;

server {
    listen 127.0.0.1:{port};
    root {tmp}/www;

    # try_files into a protected named location
    location /tf/ {
        try_files $uri @api;
    }
    location @api {
        apigw_auth on;
        apigw_require_scope admin;
        rewrite ^ /echo break;
        proxy_pass http://127.0.0.1:{upstream_port};
    }

    # a refusal that error_page hands to a protected location
    location /v1/ {
        apigw_auth on;
        apigw_require_scope admin;
        error_page 401 403 = @api;
        proxy_pass http://127.0.0.1:{upstream_port}/echo;
    }

    # an upstream's X-Accel-Redirect into an internal protected location
    location /accel/ {
        proxy_pass http://127.0.0.1:{upstream_port}/headers?h=X-Accel-Redirect:/protected/x;
    }
    location /protected/ {
        internal;
        apigw_auth on;
        proxy_pass http://127.0.0.1:{upstream_port}/echo;
    }

    # rewrite ... last into a protected location
    location /old/ {
        rewrite ^/old/(.*)$ /new/$1 last;
    }
    location /new/ {
        apigw_auth on;
        apigw_require_scope admin;
        proxy_pass http://127.0.0.1:{upstream_port}/echo;
    }

    # a rate limit in a named location reached through try_files
    location /rl/ {
        try_files $uri @limited;
    }
    location @limited {
        apigw_rate_limit per_ip;
        rewrite ^ /echo break;
        proxy_pass http://127.0.0.1:{upstream_port};
    }

    # two locations apply the same policies: one charge per request
    location /twice/ {
        apigw_auth on;
        apigw_rate_limit per_tenant;
        try_files $uri @twice;
    }
    location @twice {
        apigw_auth on;
        apigw_rate_limit per_tenant;
        rewrite ^ /echo break;
        proxy_pass http://127.0.0.1:{upstream_port};
    }

    # idempotency in two locations of one request: one claim
    location /pay/ {
        apigw_idempotency on;
        try_files $uri @pay;
    }
    location @pay {
        apigw_idempotency on;
        rewrite ^ /count/pay break;
        proxy_pass http://127.0.0.1:{upstream_port};
    }

    # the operator's error pages
    location /fallback/ {
        error_page 502 /errors/502.html;
        proxy_pass http://127.0.0.1:{dead_port};
    }
    location /named-fallback/ {
        error_page 502 = @fallback;
        proxy_pass http://127.0.0.1:{dead_port};
    }
    location @fallback {
        return 200 "fallback page\n";
    }
    location /code-fallback/ {
        error_page 404 =410 /errors/gone.html;
    }
    location /errors/ {
        internal;
    }
    location /to-protected-page/ {
        error_page 404 /secret-page/;
    }
    location /secret-page/ {
        apigw_auth on;
    }

    # subrequests
    location /ar/ {
        auth_request /check;
        proxy_pass http://127.0.0.1:{upstream_port}/echo;
    }
    location /ar-authed/ {
        apigw_auth on;
        auth_request /check;
        proxy_pass http://127.0.0.1:{upstream_port}/echo;
    }
    location /ar-scoped/ {
        apigw_auth on;
        auth_request /check-admin;
        proxy_pass http://127.0.0.1:{upstream_port}/echo;
    }
    location = /check {
        internal;
        apigw_auth on;
        proxy_pass http://127.0.0.1:{upstream_port}/echo;
    }
    location = /check-admin {
        internal;
        apigw_auth on;
        apigw_require_scope admin;
        proxy_pass http://127.0.0.1:{upstream_port}/echo;
    }
    location = /mirrored {
        mirror /mirror;
        proxy_pass http://127.0.0.1:{upstream_port}/ok;
    }
    location = /mirror {
        internal;
        apigw_auth on;
        proxy_pass http://127.0.0.1:{upstream_port}/echo/mirror;
    }
}
"""


def put_key(redis, key, key_id, scopes):
    h = "apigw:key:" + hashlib.sha256(key.encode()).hexdigest()
    redis.client().hset(h, mapping={
        "key_id": key_id, "tenant": "acme", "scopes": scopes,
        "status": "active", "account_status": "active"})


def bearer(key):
    return {"Authorization": "Bearer " + key}


def start(nginx_factory, redis, upstream):
    put_key(redis, ADMIN, "key_admin", "read admin")
    put_key(redis, READER, "key_reader", "read")
    gw = nginx_factory(CONF, redis=redis, upstream=upstream, start=False)
    www = pathlib.Path(gw.dir) / "www"
    (www / "errors").mkdir(parents=True)
    (www / "errors" / "502.html").write_text("<p>our 502 page</p>\n")
    (www / "errors" / "gone.html").write_text("<p>gone</p>\n")
    (www / "secret-page").mkdir()
    (www / "secret-page" / "index.html").write_text("secret\n")
    return gw.start()


def code_of(r):
    return json.loads(r.content)["error"]["code"]


def upstream_saw(upstream, path_prefix):
    return [q for q in upstream.requests()
            if q["uri"].startswith(path_prefix)]


def test_try_files_into_protected_named_location(nginx_factory, redis,
                                                 upstream):
    gw = start(nginx_factory, redis, upstream)

    r = requests.get(gw.url("/tf/x"))
    assert r.status_code == 401, r.content
    assert code_of(r) == "missing_credentials"
    assert r.headers["Content-Type"] == "application/json"

    r = requests.get(gw.url("/tf/x"), headers=bearer(READER))
    assert r.status_code == 403, r.content
    assert code_of(r) == "scope_required"
    assert json.loads(r.content)["error"]["details"] == {
        "required_scope": "admin"}

    assert upstream_saw(upstream, "/echo") == []

    r = requests.get(gw.url("/tf/x"), headers=bearer(ADMIN))
    assert r.status_code == 200, r.content
    h = r.json()["headers"]
    assert "authorization" not in h
    assert h["x-apigw-key-id"] == "key_admin"
    assert h["x-apigw-tenant"] == "acme"
    assert h["x-apigw-scopes"] == "read admin"


def test_error_page_refusal_is_judged_again(nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream)

    r = requests.get(gw.url("/v1/x"))
    assert r.status_code == 401, r.content
    assert code_of(r) == "missing_credentials"

    r = requests.get(gw.url("/v1/x"), headers=bearer(READER))
    assert r.status_code == 403, r.content
    assert code_of(r) == "scope_required"

    assert upstream_saw(upstream, "/echo") == []

    r = requests.get(gw.url("/v1/x"), headers=bearer(ADMIN))
    assert r.status_code == 200
    h = r.json()["headers"]
    assert "authorization" not in h
    assert h["x-apigw-key-id"] == "key_admin"


def test_x_accel_redirect_into_protected_location(nginx_factory, redis,
                                                  upstream):
    gw = start(nginx_factory, redis, upstream)

    r = requests.get(gw.url("/accel/x"))
    assert r.status_code == 401, r.content
    assert code_of(r) == "missing_credentials"
    assert upstream_saw(upstream, "/echo") == []

    r = requests.get(gw.url("/accel/x"), headers=bearer(READER))
    assert r.status_code == 200, r.content
    h = r.json()["headers"]
    assert "authorization" not in h
    assert h["x-apigw-key-id"] == "key_reader"


def test_rewrite_last_into_protected_location(nginx_factory, redis,
                                              upstream):
    gw = start(nginx_factory, redis, upstream)

    r = requests.get(gw.url("/old/x"))
    assert r.status_code == 401, r.content
    r = requests.get(gw.url("/old/x"), headers=bearer(READER))
    assert r.status_code == 403, r.content
    assert upstream_saw(upstream, "/echo") == []

    r = requests.get(gw.url("/old/x"), headers=bearer(ADMIN))
    assert r.status_code == 200
    assert r.json()["headers"]["x-apigw-scopes"] == "read admin"


def test_rate_limit_in_named_location_is_charged(nginx_factory, redis,
                                                 upstream):
    gw = start(nginx_factory, redis, upstream)

    got = [requests.get(gw.url("/rl/x")) for _ in range(3)]
    assert [r.status_code for r in got] == [200, 200, 429]
    assert [r.headers.get("X-RateLimit-Remaining") for r in got[:2]] == [
        "1", "0"]
    assert code_of(got[2]) == "rate_limited"
    assert got[2].headers["Retry-After"]
    assert len(upstream_saw(upstream, "/echo")) == 2


def test_policy_charges_once_across_two_locations(nginx_factory, redis,
                                                  upstream):
    gw = start(nginx_factory, redis, upstream)

    got = [requests.get(gw.url("/twice/x"), headers=bearer(READER))
           for _ in range(4)]
    assert [r.status_code for r in got] == [200, 200, 200, 429]
    assert [r.headers["X-RateLimit-Remaining"] for r in got[:3]] == [
        "2", "1", "0"]
    assert len(upstream_saw(upstream, "/echo")) == 3


def test_idempotency_key_claimed_once_across_two_locations(
        nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream)
    h = {"Idempotency-Key": "order-1", "Content-Type": "application/json"}

    r1 = requests.post(gw.url("/pay/x"), data=b'{"a":1}', headers=h)
    assert r1.status_code == 201, r1.content
    assert "Idempotent-Replayed" not in r1.headers

    r2 = requests.post(gw.url("/pay/x"), data=b'{"a":1}', headers=h)
    assert r2.status_code == 201, r2.content
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert r2.content == r1.content
    assert upstream.counts() == {"pay": 1}


def test_operator_error_page_to_uri(nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream)
    gw.allow_log(r"connect\(\) failed")

    r = requests.get(gw.url("/fallback/x"))
    assert r.status_code == 502
    assert r.content == b"<p>our 502 page</p>\n"
    assert r.headers["Content-Type"].startswith("text/html")
    assert r.headers["X-Request-Id"].startswith("req_")


def test_operator_error_page_named_and_code(nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream)
    gw.allow_log(r"connect\(\) failed")

    r = requests.get(gw.url("/named-fallback/x"))
    assert r.status_code == 200
    assert r.content == b"fallback page\n"

    r = requests.get(gw.url("/code-fallback/x"))
    assert r.status_code == 410
    assert r.content == b"<p>gone</p>\n"
    assert len(r.headers["X-Request-Id"]) > 4

    # a page nginx has no error_page for still becomes an envelope
    r = requests.get(gw.url("/nothing-here"))
    assert r.status_code == 404
    assert code_of(r) == "not_found"


def test_error_page_into_protected_location(nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream)

    r = requests.get(gw.url("/to-protected-page/x"))
    assert r.status_code == 401, r.content
    assert code_of(r) == "missing_credentials"
    assert b"secret" not in r.content

    r = requests.get(gw.url("/to-protected-page/x"), headers=bearer(READER))
    assert r.status_code == 404
    assert r.content == b"secret\n"


def test_auth_request_subrequest_needs_main_identity(nginx_factory, redis,
                                                    upstream):
    gw = start(nginx_factory, redis, upstream)

    # the main location does not authenticate: the subrequest is refused,
    # and the credential never reaches the subrequest's upstream
    r = requests.get(gw.url("/ar/x"), headers=bearer(ADMIN))
    assert r.status_code == 401, r.content
    assert code_of(r) == "unauthorized"   # auth_request's own 401
    assert upstream_saw(upstream, "/echo") == []

    # the main request authenticated: the subrequest runs on its identity
    r = requests.get(gw.url("/ar-authed/x"), headers=bearer(READER))
    assert r.status_code == 200, r.content
    seen = upstream_saw(upstream, "/echo")
    assert len(seen) == 2
    for q in seen:
        assert "authorization" not in q["headers"]
        assert q["headers"]["x-apigw-key-id"] == "key_reader"

    # ... judged against the subrequest location's scopes
    r = requests.get(gw.url("/ar-scoped/x"), headers=bearer(READER))
    assert r.status_code == 403, r.content
    r = requests.get(gw.url("/ar-scoped/x"), headers=bearer(ADMIN))
    assert r.status_code == 200, r.content


def test_mirror_subrequest_never_forwards_unchecked_credential(
        nginx_factory, redis, upstream):
    gw = start(nginx_factory, redis, upstream)

    r = requests.get(gw.url("/mirrored"), headers=bearer(ADMIN))
    assert r.status_code == 200
    wait_for(lambda: gw.access_log().count("/mirrored") >= 1,
             what="main request logged")
    assert upstream_saw(upstream, "/echo/mirror") == []
    assert "apigw auth: subrequest" in gw.error_log()
