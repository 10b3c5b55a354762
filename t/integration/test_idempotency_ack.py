"""Idempotency: the response's end reaches the client only after Redis has
acknowledged the completed record (issue 18), so a retry sent to another
node the moment the first response is complete replays, whatever the size.
Redis paused before the completion: the response still ends within the
Redis timeout, the miss is counted, and the record completes once Redis is
back.  A client that leaves mid-response still gets its record."""

import re
import socket
import threading
import time

import pytest
import requests

import harness
from harness import wait_for

WRAPPED = bool(getattr(harness, "NGINX_WRAPPER", ""))

CONF = """
apigw on;
apigw_redis {redis_addr} timeout=%(timeout)s connect_timeout=200ms;

client_max_body_size 2m;

server {
    listen 127.0.0.1:{port};
    # one service on two nodes (on two ports here): they share records
    server_name api.test;

    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_read_timeout 10s;
    proxy_ignore_client_abort on;

    location /api/ {
        apigw_idempotency on;
        apigw_idempotency_lock_ttl 10s;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /plain/ {
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location = /metrics {
        apigw_metrics;
    }
}
"""


def nodes(nginx_factory, redis, upstream, n=2, timeout="300ms"):
    if WRAPPED:
        timeout = "5s"
    return [nginx_factory(CONF % {"timeout": timeout}, redis=redis,
                          upstream=upstream) for _ in range(n)]


def post(node, path, key, body=b'{"a":1}', timeout=10):
    return requests.post(node.url(path), data=body, timeout=timeout,
                         headers={"Idempotency-Key": key,
                                  "Content-Type": "application/json"})


def unacked(node):
    text = requests.get(node.url("/metrics")).text
    m = re.search(r'^apigw_idempotency_settled_total\{outcome='
                  r'"unacknowledged"\} (\d+)$', text, re.M)
    assert m, text
    return int(m.group(1))


@pytest.mark.parametrize("size", [1000, 65536, 262144, 614400, 900000])
def test_retry_on_other_node_replays_at_once(nginx_factory, redis, upstream,
                                             size):
    a, b = nodes(nginx_factory, redis, upstream)
    tries = 5 if WRAPPED else 50
    for i in range(tries):
        key = "k-%d-%d" % (size, i)
        path = "/api/count/c%d-%d?size=%d" % (size, i, size)
        r1 = post(a, path, key)
        assert r1.status_code == 201, r1.content[:200]
        assert len(r1.content) == size
        assert "Idempotent-Replayed" not in r1.headers
        # sent the moment the first response is complete, to the other node
        r2 = post(b, path, key)
        assert r2.status_code == 201, (i, r2.content[:300])
        assert r2.headers.get("Idempotent-Replayed") == "true", i
        assert r2.content == r1.content
    counts = upstream.counts()
    assert all(counts["c%d-%d" % (size, i)] == 1 for i in range(tries))
    assert unacked(a) == 0


def test_redis_paused_before_completion(nginx_factory, redis, upstream):
    """The upstream answers while Redis is stopped: the response still ends
    within the Redis timeout, the miss is counted, the key stays in flight,
    and once Redis is back the retried completion makes it a replay."""
    a, b = nodes(nginx_factory, redis, upstream)
    a.allow_log(r"complete of .* (timed out|failed)")
    got = {}

    def first():
        t = time.monotonic()
        got["r"] = post(a, "/api/count/slow?sleep=600&size=2000", "paused")
        got["t"] = time.monotonic() - t

    th = threading.Thread(target=first)
    th.start()
    wait_for(lambda: upstream.counts().get("slow") == 1, 5,
             what="the request upstream")
    redis.pause()
    try:
        th.join(10)
        assert not th.is_alive()
        r = got["r"]
        assert r.status_code == 201
        assert len(r.content) == 2000
        # 600 ms upstream + at most the 300 ms Redis timeout, with slack
        assert got["t"] < (10 if WRAPPED else 2.0), got["t"]
        assert unacked(a) == 1
    finally:
        redis.resume()

    def replayed():
        r = post(b, "/api/count/slow?sleep=600&size=2000", "paused")
        if r.status_code == 409:
            return None
        return r
    r = wait_for(replayed, 15, interval=0.3, what="the completed record")
    assert r.status_code == 201
    assert r.headers["Idempotent-Replayed"] == "true"
    assert r.content == got["r"].content
    assert upstream.counts()["slow"] == 1


def test_client_leaves_mid_response_then_retry_replays(nginx_factory, redis,
                                                       upstream):
    a, b = nodes(nginx_factory, redis, upstream)
    size = 800000
    s = socket.create_connection(("127.0.0.1", a.port))
    s.sendall(b"POST /api/count/left?sleep=200&size=%d HTTP/1.1\r\n"
              b"Host: t\r\nIdempotency-Key: left\r\n"
              b"Content-Length: 1\r\n\r\nx" % size)
    s.recv(4096)            # the head and the first bytes, then leave
    s.close()
    last = []

    def replayed():
        r = post(b, "/api/count/left?sleep=200&size=%d" % size, "left",
                 body=b"x")
        last.append(r.content[:300])
        return r if r.status_code != 409 else None
    try:
        r = wait_for(replayed, 10, interval=0.2, what="the completed record")
    except harness.HarnessError:
        raise AssertionError(last[-1:])
    assert r.status_code == 201
    assert r.headers["Idempotent-Replayed"] == "true"
    assert len(r.content) == size
    assert upstream.counts()["left"] == 1


def test_uncovered_requests_do_not_wait(nginx_factory, redis, upstream):
    """Responses apigw does not store never wait on Redis: with Redis
    paused, a GET through an idempotency location and any request through
    a plain location answer at once."""
    a, = nodes(nginx_factory, redis, upstream, n=1, timeout="2s")
    redis.pause()
    try:
        for path in ("/api/bytes/300000", "/plain/bytes/300000"):
            t = time.monotonic()
            r = requests.get(a.url(path), timeout=10)
            assert r.status_code == 200
            assert len(r.content) == 300000
            assert time.monotonic() - t < (5 if WRAPPED else 1.0)
    finally:
        redis.resume()
