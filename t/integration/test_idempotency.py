"""Idempotency-Key handling against a real redis-server and upstream: the
one-execution guarantee across two nginx nodes, byte-identical replays,
every refusal with its exact envelope, what is and is not stored, TTLs,
request bodies in temp files, tenant and scope namespaces, and faults
(Redis down or restarted, nginx reloaded, the upstream killed, the client
leaving before or during the response)."""

import concurrent.futures
import hashlib
import json
import shutil
import socket
import subprocess
import threading
import time

import pytest
import requests

import harness
from harness import (det_bytes, free_port, parse_raw_response, raw_request,
                     wait_for)

# nginx under a wrapper (make test-valgrind) runs many times slower
WRAPPED = bool(getattr(harness, "NGINX_WRAPPER", ""))

CONF = """
apigw on;
apigw_redis {redis_addr} timeout=300ms connect_timeout=200ms;
apigw_auth_cache zone=idemkeys:1m ttl=30s negative_ttl=1s;

client_body_buffer_size 8k;
client_max_body_size 2m;

log_format idem '$status idem=$apigw_idempotency_status '
                'err=$apigw_error_code "$request"';

server {
    listen 127.0.0.1:{port};
    access_log {tmp}/idem.log idem;

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_read_timeout 10s;
    proxy_ignore_client_abort on;

    location /api/ {
        apigw_idempotency on;
        apigw_idempotency_lock_ttl 10s;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /required/ {
        apigw_idempotency on;
        apigw_idempotency_required on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /short/ {
        apigw_idempotency on;
        apigw_idempotency_ttl 2s;
        apigw_idempotency_lock_ttl 2s;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /small/ {
        apigw_idempotency on;
        apigw_idempotency_max_body 64;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /nocl/ {
        apigw_idempotency on;
        proxy_pass http://127.0.0.1:{gen_port}/;
    }
    location /auth/ {
        apigw_auth on;
        apigw_idempotency on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /scoped/ {
        apigw_idempotency on;
        apigw_idempotency_scope $http_x_client;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /open/ {
        apigw_idempotency on;
        apigw_idempotency_fail open;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}

# the upstream's responses without Content-Length (sub_filter drops it)
server {
    listen 127.0.0.1:{gen_port};
    location / {
        sub_filter_types *;
        sub_filter '"name"' '"name"';
        proxy_pass http://127.0.0.1:{upstream_port};
    }
}
"""

KEY_A = "live_" + "A" * 40
KEY_B = "live_" + "B" * 40

MISMATCH = "This Idempotency-Key was already used with a different request."
REQUIRED = "This request requires an Idempotency-Key header."
INVALID = ("The Idempotency-Key header must be 1 to 255 printable ASCII "
           "characters without spaces.")
TOO_LARGE = ("The request with this Idempotency-Key completed, but its "
             "response was too large to store.")


@pytest.fixture
def gw(nginx_factory, redis, upstream):
    return nginx_factory(CONF, redis=redis, upstream=upstream,
                         vars={"gen_port": free_port()})


def post(gw, path, body=b"x", key=None, method="POST", headers=None,
         timeout=10):
    h = dict(headers or {})
    if key is not None:
        h["Idempotency-Key"] = key
    return requests.request(method, gw.url(path), data=body, headers=h,
                            timeout=timeout)


def assert_envelope(r, status, code, etype, message, extra=None):
    rid = r.headers["X-Request-Id"]
    err = '"type":"%s","code":"%s","message":%s' % (
        etype, code, json.dumps(message))
    if extra:
        err += "," + extra
    if status >= 500:
        err += ',"correlation_id":"%s"' % rid
    body = '{"error":{%s},"request_id":"%s"}' % (err, rid)
    assert r.status_code == status, r.content
    assert r.content == body.encode(), r.content
    assert int(r.headers["Content-Length"]) == len(r.content)


def assert_in_progress(r, lock_s):
    ra = int(r.headers["Retry-After"])
    assert 1 <= ra <= lock_s, ra
    assert_envelope(r, 409, "idempotency_key_in_progress",
                    "invalid_request_error",
                    "A request with this Idempotency-Key is still in "
                    "progress. Retry after %d seconds." % ra,
                    '"details":{"retry_after":%d}' % ra)


def count(upstream, name):
    return upstream.counts().get(name, 0)


def idem_keys(redis):
    return sorted(redis.client().keys("apigw:idem:*"))


def wait_completed(redis, timeout=20 if WRAPPED else 5):
    """the (only) record reaches "completed"; returns its key"""
    def done():
        c = redis.client()
        for k in c.keys("apigw:idem:*"):
            if c.hget(k, "state") == "completed":
                return k
        return None
    return wait_for(done, timeout, what="a completed idempotency record")


def statuses(gw, n):
    """idem=... of the access log's n lines, in order (a line is written
    just after its response is sent: waits for all n)"""
    def lines():
        with open(gw.dir + "/idem.log") as f:
            out = [ln.split("idem=")[1].split()[0] for ln in f]
        return out if len(out) >= n else None
    return wait_for(lines, 5, what="%d access log lines" % n)


def put_key(redis, key, tenant, key_id):
    h = "apigw:key:" + hashlib.sha256(key.encode()).hexdigest()
    c = redis.client()
    c.delete(h)
    c.hset(h, mapping={"key_id": key_id, "tenant": tenant,
                       "scopes": "orders:write", "status": "active",
                       "account_status": "active"})


def raw_head_lines(data):
    """the response's header lines in order, as sent"""
    head = data[:data.index(b"\r\n\r\n")].decode("latin-1").split("\r\n")
    return head[0], head[1:]


# the guarantee

def test_concurrent_requests_two_nodes_run_once(nginx_factory, redis,
                                                upstream):
    nodes = []
    for _ in range(2):
        n = nginx_factory.example("idempotency", redis=redis,
                                  upstream=upstream, start=False)
        if WRAPPED:
            # one slow process: Redis replies must not time out
            n._full_conf = n._full_conf.replace(
                "master_process on;", "master_process off;").replace(
                "timeout=200ms", "timeout=5s")
        nodes.append(n.start())
    body = b'{"amount":100,"currency":"eur"}'
    path = "/payments/count/charge?sleep=300"
    n = 50
    barrier = threading.Barrier(n)

    def one(i):
        barrier.wait(timeout=10)
        return post(nodes[i % 2], path, body, key="charge-1", timeout=15)

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        results = list(ex.map(one, range(n)))

    assert count(upstream, "charge") == 1
    assert all(r.status_code in (201, 409) for r in results), \
        [r.status_code for r in results]

    ok = [r for r in results if r.status_code == 201]
    originals = [r for r in ok if "Idempotent-Replayed" not in r.headers]
    assert len(originals) == 1
    original = originals[0].content
    assert json.loads(original)["n"] == 1
    for r in ok:
        assert r.content == original
    for r in results:
        if r.status_code == 409:
            assert_in_progress(r, 60)

    # afterwards every node replays it, and still nothing runs again
    for node in nodes:
        r = post(node, path, body, key="charge-1")
        assert r.status_code == 201
        assert r.headers["Idempotent-Replayed"] == "true"
        assert r.content == original
    assert count(upstream, "charge") == 1

    def all_logged():
        text = "".join(node.access_log() for node in nodes)
        return text if text.count("\n") >= n + 2 else None
    logs = wait_for(all_logged, 5, what="every access log line")
    assert logs.count("idem=miss") == 1
    assert logs.count("idem=replay") >= 2


# replays

def test_replay_is_byte_identical(gw, upstream):
    req = (b"POST /api/count/rep?x=1 HTTP/1.1\r\nHost: t\r\n"
           b"Idempotency-Key: rep-1\r\nContent-Length: 5\r\n"
           b"Connection: close\r\n\r\nhello")
    first = raw_request(gw.port, req)
    second = raw_request(gw.port, req)
    s1, h1, b1 = parse_raw_response(first)
    s2, h2, b2 = parse_raw_response(second)

    assert (s1, s2) == (201, 201)
    assert b1 == b2
    assert json.loads(b1)["n"] == 1
    assert count(upstream, "rep") == 1

    assert "idempotent-replayed" not in h1
    assert h2["idempotent-replayed"] == ["true"]
    assert h1["set-cookie"] == ["s=1"]
    assert "set-cookie" not in h2
    for name in ("content-type", "location", "x-custom", "content-length"):
        assert h1[name] == h2[name], name
    assert h1["x-request-id"] != h2["x-request-id"]

    # the same header lines in the same order, but for the per-response ones
    line1, lines1 = raw_head_lines(first)
    line2, lines2 = raw_head_lines(second)
    assert line1 == line2

    def same(lines, drop):
        return [ln for ln in lines
                if ln.split(":")[0].lower() not in drop]
    fresh = ("date", "x-request-id")
    assert same(lines1, fresh + ("set-cookie",)) == \
        same(lines2, fresh + ("idempotent-replayed",))

    assert statuses(gw, 2) == ["miss", "replay"]


def test_stored_4xx_is_replayed(gw, upstream):
    first = post(gw, "/api/count/nf?status=404", key="nf")
    again = post(gw, "/api/count/nf?status=404", key="nf")
    assert first.status_code == again.status_code == 404
    assert again.headers["Idempotent-Replayed"] == "true"
    # exactly what the client received the first time: the envelope
    assert again.content == first.content
    assert json.loads(first.content)["error"]["code"] == "not_found"
    assert count(upstream, "nf") == 1


def test_response_without_content_length(gw, upstream):
    first = post(gw, "/nocl/count/big?size=100000", key="nocl")
    assert first.status_code == 201
    assert "Content-Length" not in first.headers
    assert len(first.content) == 100000
    again = post(gw, "/nocl/count/big?size=100000", key="nocl")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert int(again.headers["Content-Length"]) == 100000
    assert count(upstream, "big") == 1


# refusals

@pytest.mark.parametrize("first,second", [
    (("POST", "/api/count/mm?x=1", b"a"), ("POST", "/api/count/mm?x=1", b"b")),
    (("POST", "/api/count/mm", b"a"), ("POST", "/api/count/mm2", b"a")),
    (("POST", "/api/count/mm?x=1", b"a"), ("POST", "/api/count/mm?x=2", b"a")),
    (("POST", "/api/count/mm", b"a"), ("PATCH", "/api/count/mm", b"a")),
], ids=["body", "path", "query", "method"])
def test_mismatch(gw, upstream, first, second):
    r = post(gw, first[1], first[2], key="mm", method=first[0])
    assert r.status_code == 201
    r = post(gw, second[1], second[2], key="mm", method=second[0])
    assert_envelope(r, 422, "idempotency_key_mismatch",
                    "invalid_request_error", MISMATCH)
    assert sum(upstream.counts().values()) == 1
    assert statuses(gw, 2) == ["miss", "conflict"]


def test_in_flight(gw, upstream):
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        slow = ex.submit(post, gw, "/api/count/fl?sleep=1500", b"x", "fl")
        wait_for(lambda: count(upstream, "fl") == 1, 5,
                 what="the first request upstream")
        r = post(gw, "/api/count/fl?sleep=1500", key="fl")
        assert_in_progress(r, 10)
        first = slow.result()
    assert first.status_code == 201
    r = post(gw, "/api/count/fl?sleep=1500", key="fl")
    assert r.status_code == 201
    assert r.content == first.content
    assert count(upstream, "fl") == 1
    assert sorted(statuses(gw, 3)) == ["in_flight", "miss", "replay"]


def test_required(gw, upstream):
    r = post(gw, "/required/count/rq")
    assert_envelope(r, 400, "idempotency_key_required",
                    "invalid_request_error", REQUIRED)
    assert count(upstream, "rq") == 0
    # methods not covered pass without a key
    assert requests.get(gw.url("/required/count/rq")).status_code == 201
    assert post(gw, "/required/count/rq", key="rq").status_code == 201
    assert count(upstream, "rq") == 2


def test_not_required_without_key_passes(gw, upstream):
    assert post(gw, "/api/count/nk").status_code == 201
    assert post(gw, "/api/count/nk").status_code == 201
    assert count(upstream, "nk") == 2
    assert statuses(gw, 2) == ["-", "-"]


def test_uncovered_method_ignores_key(gw, upstream, redis):
    for _ in range(2):
        r = requests.put(gw.url("/api/count/put"), data=b"x",
                         headers={"Idempotency-Key": "put"})
        assert r.status_code == 201
    assert count(upstream, "put") == 2
    assert idem_keys(redis) == []


@pytest.mark.parametrize("value", [
    b"has space", b"x" * 256, b'"unterminated', b'"a";p=1', b'"a\\b"',
    b"ab\x01cd", b"ab\x7fcd", b"caf\xc3\xa9", b'""',
], ids=["space", "256", "unterminated", "params", "bad-escape", "ctl",
        "del", "utf8", "empty-quoted"])
def test_invalid_key(gw, upstream, redis, value):
    req = (b"POST /api/count/inv HTTP/1.1\r\nHost: t\r\n"
           b"Idempotency-Key: " + value + b"\r\nContent-Length: 1\r\n"
           b"Connection: close\r\n\r\nx")
    status, headers, body = parse_raw_response(raw_request(gw.port, req))
    rid = headers["x-request-id"][0]
    assert status == 400
    assert body == (
        '{"error":{"type":"invalid_request_error",'
        '"code":"idempotency_key_invalid","message":%s,'
        '"param":"Idempotency-Key"},"request_id":"%s"}'
        % (json.dumps(INVALID), rid)).encode()
    assert count(upstream, "inv") == 0
    assert idem_keys(redis) == []


def test_two_key_headers_are_invalid(gw, upstream):
    req = (b"POST /api/count/two HTTP/1.1\r\nHost: t\r\n"
           b"Idempotency-Key: a\r\nIdempotency-Key: b\r\n"
           b"Content-Length: 1\r\nConnection: close\r\n\r\nx")
    status, _, body = parse_raw_response(raw_request(gw.port, req))
    assert status == 400
    assert json.loads(body)["error"]["code"] == "idempotency_key_invalid"
    assert count(upstream, "two") == 0


def test_longest_key_and_quoted_key(gw, upstream):
    k = "k" * 255
    assert post(gw, "/api/count/long", key=k).status_code == 201
    r = post(gw, "/api/count/long", key=k)
    assert r.headers["Idempotent-Replayed"] == "true"

    # an sf-string is the same key as its bare form
    first = post(gw, "/api/count/q", key='"order-7"')
    assert first.status_code == 201
    again = post(gw, "/api/count/q", key="order-7")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    esc = post(gw, "/api/count/q2", key='"a\\"b"')
    assert esc.status_code == 201
    assert post(gw, "/api/count/q2", key='a"b').headers[
        "Idempotent-Replayed"] == "true"
    assert count(upstream, "long") == count(upstream, "q") == 1
    assert count(upstream, "q2") == 1


# what is not stored, and for how long what is

@pytest.mark.parametrize("status", [500, 503, 429, 409])
def test_not_stored_statuses_release_the_key(gw, upstream, redis, status):
    path = "/api/count/ns?status=%d" % status
    assert post(gw, path, key="ns").status_code == status
    wait_for(lambda: idem_keys(redis) == [], 5, what="the key released")
    assert post(gw, path, key="ns").status_code == status
    assert count(upstream, "ns") == 2


def test_ttl_expiry(gw, upstream, redis):
    assert post(gw, "/short/count/ttl", key="ttl").status_code == 201
    r = post(gw, "/short/count/ttl", key="ttl")
    assert r.headers["Idempotent-Replayed"] == "true"
    wait_for(lambda: idem_keys(redis) == [], 6, interval=0.1,
             what="the record to expire")
    r = post(gw, "/short/count/ttl", key="ttl")
    assert r.status_code == 201
    assert "Idempotent-Replayed" not in r.headers
    assert count(upstream, "ttl") == 2


def test_lock_expires_after_upstream_killed(gw, upstream, redis):
    """The upstream dies mid-request: it may have run, so the key is not
    released; a retry is refused until the lock ttl, then runs."""
    path = "/short/count/kill?sleep=2000"
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        first = ex.submit(post, gw, path, b"x", "kill")
        wait_for(lambda: count(upstream, "kill") == 1, 5,
                 what="the request upstream")
        upstream.kill()
        r = first.result()
    assert r.status_code == 502
    upstream.start()

    r = post(gw, path, key="kill")
    assert_in_progress(r, 2)
    assert count(upstream, "kill") == 0

    wait_for(lambda: idem_keys(redis) == [], 6, interval=0.1,
             what="the lock to expire")
    r = post(gw, path, key="kill")
    assert r.status_code == 201
    assert "Idempotent-Replayed" not in r.headers
    assert count(upstream, "kill") == 1
    gw.wait_log("stays locked for its lock ttl", which="error")


def test_too_large_response_is_never_run_again(gw, upstream):
    first = post(gw, "/small/count/big?size=1000", key="big")
    assert first.status_code == 201
    assert len(first.content) == 1000
    for _ in range(2):
        r = post(gw, "/small/count/big?size=1000", key="big")
        assert_envelope(r, 409, "idempotency_replay_unavailable",
                        "invalid_request_error", TOO_LARGE)
    assert count(upstream, "big") == 1
    # a small one in the same location is stored whole
    small = post(gw, "/small/status/201?shape=text", key="s")
    assert small.status_code == 201 and len(small.content) <= 64
    r = post(gw, "/small/status/201?shape=text", key="s")
    assert r.headers["Idempotent-Replayed"] == "true"
    assert r.content == small.content


# the request body

def test_body_in_temp_file(gw, upstream):
    body = det_bytes(200000)            # > client_body_buffer_size 8k
    first = post(gw, "/api/count/tf", body, key="tf")
    assert first.status_code == 201
    # the upstream still got the whole body after we read it
    assert json.loads(first.content)["body_sha256"] == \
        hashlib.sha256(body).hexdigest()
    assert "buffered to a temporary file" in gw.error_log()

    again = post(gw, "/api/count/tf", body, key="tf")
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content

    changed = body[:150000] + bytes([body[150000] ^ 1]) + body[150001:]
    r = post(gw, "/api/count/tf", changed, key="tf")
    assert_envelope(r, 422, "idempotency_key_mismatch",
                    "invalid_request_error", MISMATCH)
    assert count(upstream, "tf") == 1


def test_body_too_large_claims_nothing(gw, upstream, redis):
    r = post(gw, "/api/count/huge", det_bytes(3 * 1024 * 1024), key="huge")
    assert r.status_code == 413
    assert json.loads(r.content)["error"]["code"] == "payload_too_large"
    assert count(upstream, "huge") == 0
    assert idem_keys(redis) == []


def test_conditional_retry_gets_the_replay(gw, upstream):
    first = post(gw, "/api/headers?h=ETag:%22v1%22&status=200", key="etag")
    assert first.status_code == 200 and first.headers["ETag"] == '"v1"'
    r = post(gw, "/api/headers?h=ETag:%22v1%22&status=200", key="etag",
             headers={"If-None-Match": '"v1"'})
    assert r.status_code == 200
    assert r.headers["Idempotent-Replayed"] == "true"
    assert r.content == first.content


def test_chunked_body_same_fingerprint(gw, upstream):
    body = det_bytes(30000)
    first = post(gw, "/api/count/ch", body, key="ch")
    assert first.status_code == 201

    def gen():
        for i in range(0, len(body), 7000):
            yield body[i:i + 7000]
    again = requests.post(gw.url("/api/count/ch"), data=gen(),
                          headers={"Idempotency-Key": "ch"}, timeout=10)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content == first.content
    assert count(upstream, "ch") == 1


# namespaces

def test_tenants_do_not_share_keys(gw, upstream, redis):
    put_key(redis, KEY_A, "acme", "key_a")
    put_key(redis, KEY_B, "globex", "key_b")
    a = post(gw, "/auth/count/t", b"same", key="same-key",
             headers={"Authorization": "Bearer " + KEY_A})
    b = post(gw, "/auth/count/t", b"same", key="same-key",
             headers={"Authorization": "Bearer " + KEY_B})
    assert a.status_code == b.status_code == 201
    assert "Idempotent-Replayed" not in b.headers
    assert count(upstream, "t") == 2

    a2 = post(gw, "/auth/count/t", b"same", key="same-key",
              headers={"Authorization": "Bearer " + KEY_A})
    b2 = post(gw, "/auth/count/t", b"same", key="same-key",
              headers={"Authorization": "Bearer " + KEY_B})
    assert a2.content == a.content and b2.content == b.content
    assert json.loads(a.content)["n"] != json.loads(b.content)["n"]
    assert count(upstream, "t") == 2

    keys = idem_keys(redis)
    assert len(keys) == 2
    assert any(k.startswith("apigw:idem:{acme}:") for k in keys)
    assert any(k.startswith("apigw:idem:{globex}:") for k in keys)
    # the idempotency key itself is never a Redis key name
    assert not any("same-key" in k for k in keys)

    # unauthenticated: refused before anything is claimed
    r = post(gw, "/auth/count/t", b"same", key="same-key")
    assert r.status_code == 401
    assert len(idem_keys(redis)) == 2


def test_scope_without_auth(gw, upstream, redis):
    a = post(gw, "/scoped/count/sc", key="k", headers={"X-Client": "a"})
    b = post(gw, "/scoped/count/sc", key="k", headers={"X-Client": "b"})
    assert "Idempotent-Replayed" not in b.headers
    a2 = post(gw, "/scoped/count/sc", key="k", headers={"X-Client": "a"})
    assert a2.headers["Idempotent-Replayed"] == "true"
    assert a2.content == a.content != b.content
    assert count(upstream, "sc") == 2
    keys = idem_keys(redis)
    assert any(k.startswith("apigw:idem:{scope:a}:") for k in keys)
    assert any(k.startswith("apigw:idem:{scope:b}:") for k in keys)


def test_shared_namespace_without_auth_or_scope(gw, redis):
    assert post(gw, "/api/count/sh", key="k").status_code == 201
    assert [k[:len("apigw:idem:{-}:")] for k in idem_keys(redis)] == \
        ["apigw:idem:{-}:"]


# faults

def test_redis_down_fail_closed_and_open(gw, upstream, redis):
    redis.stop()
    r = post(gw, "/api/count/down", key="down")
    assert r.headers["Retry-After"] == "1"
    assert_envelope(r, 503, "idempotency_unavailable", "api_error",
                    "The idempotency store is unavailable. Retry after 1 "
                    "seconds.", '"details":{"retry_after":1}')
    assert count(upstream, "down") == 0

    r = post(gw, "/open/count/open", key="open")
    assert r.status_code == 201
    assert count(upstream, "open") == 1
    gw.wait_log("forwarded without idempotency protection", which="error")
    gw.allow_log(r"redis")


def test_redis_paused_fails_fast(gw, upstream, redis):
    redis.pause()
    try:
        t0 = time.monotonic()
        r = post(gw, "/short/count/paused", key="paused")
        assert time.monotonic() - t0 < 2.0
        assert r.status_code == 503
        assert json.loads(r.content)["error"]["code"] == \
            "idempotency_unavailable"
    finally:
        redis.resume()
    assert count(upstream, "paused") == 0
    # the claim that timed out may still run once Redis wakes up: it is
    # released (or its 2 s lock expires), the key is not blocked for good
    wait_for(lambda: post(gw, "/short/count/paused", key="paused")
             .status_code == 201, 10, interval=0.2, what="recovery")
    assert count(upstream, "paused") == 1
    gw.allow_log(r"redis")


def test_replay_survives_redis_restart_and_reload(gw, upstream, redis):
    first = post(gw, "/api/count/rs", key="rs")
    assert first.status_code == 201
    wait_completed(redis)

    redis.client().save()           # the restart reloads dump.rdb
    redis.restart()

    def replayed():
        r = post(gw, "/api/count/rs", key="rs")
        return r if r.status_code == 201 else None
    r = wait_for(replayed, 10, interval=0.2, what="a replay after restart")
    assert r.headers["Idempotent-Replayed"] == "true"
    assert r.content == first.content

    if not WRAPPED:                 # one process: no reload
        gw.reload()
        r = post(gw, "/api/count/rs", key="rs")
        assert r.headers["Idempotent-Replayed"] == "true"
        assert r.content == first.content
    assert count(upstream, "rs") == 1
    gw.allow_log(r"redis")


def test_client_leaves_before_the_response(gw, upstream, redis):
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST /api/count/dc?sleep=300 HTTP/1.1\r\nHost: t\r\n"
              b"Idempotency-Key: dc\r\nContent-Length: 2\r\n\r\nhi")
    s.settimeout(0.1)
    with pytest.raises(socket.timeout):
        s.recv(100)
    # (at once, unless nginx runs under valgrind)
    wait_for(lambda: count(upstream, "dc") == 1, 20,
             what="the request upstream")
    s.close()

    wait_completed(redis)
    r = post(gw, "/api/count/dc?sleep=300", b"hi", key="dc")
    assert r.status_code == 201
    assert r.headers["Idempotent-Replayed"] == "true"
    assert json.loads(r.content)["n"] == 1
    assert count(upstream, "dc") == 1


def test_client_leaves_during_a_large_response(gw, upstream, redis):
    """The client is gone when nginx writes the response: the rest of it
    is still read from the upstream and stored whole."""
    size = 600000
    s = socket.create_connection(("127.0.0.1", gw.port))
    s.sendall(b"POST /api/count/gone?sleep=300&size=%d HTTP/1.1\r\n"
              b"Host: t\r\nIdempotency-Key: gone\r\n"
              b"Content-Length: 1\r\n\r\nx" % size)
    wait_for(lambda: count(upstream, "gone") == 1, 5,
             what="the request upstream")
    s.close()

    wait_completed(redis)
    r = post(gw, "/api/count/gone?sleep=300&size=%d" % size, key="gone")
    assert r.status_code == 201
    assert r.headers["Idempotent-Replayed"] == "true"
    assert len(r.content) == size
    assert json.loads(r.content)["n"] == 1
    assert count(upstream, "gone") == 1


def test_client_leaves_at_once(gw, upstream, redis):
    """Gone before or after the claim: the request runs at most once, and
    the key is never left blocked."""
    for i in range(5):
        s = socket.create_connection(("127.0.0.1", gw.port))
        s.sendall(b"POST /api/count/once%d HTTP/1.1\r\nHost: t\r\n"
                  b"Idempotency-Key: once%d\r\n"
                  b"Content-Length: 1\r\n\r\nx" % (i, i))
        s.close()
    for i in range(5):
        def ok():
            r = post(gw, "/api/count/once%d" % i, key="once%d" % i)
            return r.status_code == 201
        wait_for(ok, 5, interval=0.1, what="a 201 for once%d" % i)
        assert count(upstream, "once%d" % i) == 1


H2_CONF = """
apigw on;
apigw_redis {redis_addr} timeout=300ms;
client_body_buffer_size 8k;
server {
    listen 127.0.0.1:{port} http2;
    location /api/ {
        apigw_idempotency on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
"""


def h2_post(gw, path, body, key):
    out = subprocess.run(
        ["curl", "-s", "--http2-prior-knowledge", "-D", "-", "--max-time",
         "10", "-X", "POST", "--data-binary", "@-", "-H",
         "Idempotency-Key: " + key, gw.url(path)],
        input=body, stdout=subprocess.PIPE, check=True).stdout
    head, _, resp = out.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    hdrs = {}
    for ln in lines[1:]:
        k, _, v = ln.partition(":")
        hdrs[k.strip().lower()] = v.strip()
    assert lines[0].startswith("HTTP/2")
    return int(lines[0].split()[1]), hdrs, resp


@pytest.mark.skipif(shutil.which("curl") is None, reason="no curl")
def test_http2(nginx_factory, redis, upstream):
    gw = nginx_factory(H2_CONF, redis=redis, upstream=upstream)
    body = det_bytes(50000)             # read by the HTTP/2 body reader
    status, h1, b1 = h2_post(gw, "/api/count/h2", body, "h2")
    assert status == 201
    assert json.loads(b1)["body_sha256"] == hashlib.sha256(body).hexdigest()
    status, h2, b2 = h2_post(gw, "/api/count/h2", body, "h2")
    assert status == 201
    assert h2["idempotent-replayed"] == "true"
    assert b2 == b1
    assert h2["location"] == h1["location"]
    status, _, b3 = h2_post(gw, "/api/count/h2", body + b"!", "h2")
    assert status == 422
    assert json.loads(b3)["error"]["code"] == "idempotency_key_mismatch"
    assert count(upstream, "h2") == 1


def test_needs_redis_directive(nginx_factory):
    n = nginx_factory("server { listen 127.0.0.1:{port}; "
                      "location / { apigw_idempotency on; } }", start=False)
    rc, out = n.test_config()
    assert rc != 0
    assert "apigw_redis" in out


def test_bad_directive_values(nginx_factory):
    for bad in ("apigw_idempotency_methods FETCH;",
                "apigw_idempotency_fail maybe;",
                "apigw_idempotency_ttl 0;",
                "apigw_idempotency_max_body 300m;"):
        n = nginx_factory("apigw_redis 127.0.0.1:{dead_port}; "
                          "server { listen 127.0.0.1:{port}; %s }" % bad,
                          start=False)
        rc, out = n.test_config()
        assert rc != 0, bad
