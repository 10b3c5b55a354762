"""Unknown keys cannot push good keys out of the auth cache (issue 12,
item 8).  A spray of 100,000 random unknown keys at a 1 MB zone: a good key
used every few seconds keeps being served from the cache (its record is
deleted from Redis after the first lookup, so a miss would answer 401), and
keeps authenticating through a Redis outage under stale_if_error.  Unknown
keys cost at most one Redis lookup each."""

import hashlib
import os
import socket
import threading
import time

import requests

import harness

WRAPPED = bool(getattr(harness, "NGINX_WRAPPER", ""))

GOOD = "live_" + "G" * 40

CONF = """
apigw on;
apigw_redis 127.0.0.1:{redis_port} timeout=500ms;
apigw_auth_cache zone=keys:1m ttl=120s negative_ttl=5s stale_if_error=120s;
access_log off;

server {
    listen 127.0.0.1:{port};
    keepalive_requests 1000000;
    location /api/ {
        rewrite ^ /ok break;
        apigw_auth on;
        proxy_pass http://127.0.0.1:{upstream_port};
    }
}
"""


def spray(port, n, stop, counts):
    """n requests with fresh random keys, pipelined 50 at a time on one
    keep-alive connection; counts 401s."""
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    buf = b""
    sent = 0
    while sent < n and not stop.is_set():
        batch = min(50, n - sent)
        reqs = b"".join(
            b"GET /api/x HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer live_"
            + os.urandom(20).hex().encode() + b"\r\n\r\n"
            for _ in range(batch))
        s.sendall(reqs)
        got = 0
        while got < batch:
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError("connection closed mid-spray")
            buf += chunk
            while True:
                head, sep, rest = buf.partition(b"\r\n\r\n")
                if not sep:
                    break
                clen = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        clen = int(line.split(b":")[1])
                if len(rest) < clen:
                    break
                counts[head.split(b" ")[1]] = counts.get(
                    head.split(b" ")[1], 0) + 1
                buf = rest[clen:]
                got += 1
        sent += batch
    s.close()


def test_spray_does_not_evict_good_keys(nginx_factory, redis, upstream):
    gw = nginx_factory(CONF, redis=redis, upstream=upstream,
                       worker_processes=2, log_level="notice")
    c = redis.client()
    h = "apigw:key:" + hashlib.sha256(GOOD.encode()).hexdigest()
    c.hset(h, mapping={"key_id": "key_g", "tenant": "acme", "scopes": "",
                       "status": "active", "account_status": "active"})
    auth = {"Authorization": "Bearer " + GOOD}

    # both workers learn the key, then Redis forgets it: from now on only
    # the cache can say it is good
    for _ in range(20):
        assert requests.get(gw.url("/api/ok"), headers=auth).status_code \
            == 200
    c.delete(h)
    before = redis.commandstats().get("hmget", 0)

    total = 20000 if WRAPPED else 100000
    threads, stop, counts = [], threading.Event(), [{} for _ in range(4)]
    for i in range(4):
        t = threading.Thread(target=spray,
                             args=(gw.port, total // 4, stop, counts[i]))
        t.start()
        threads.append(t)

    good = []
    t0 = time.monotonic()
    try:
        while any(t.is_alive() for t in threads):
            good.append(requests.get(gw.url("/api/ok"), headers=auth,
                                     timeout=10).status_code)
            for t in threads:
                t.join(0.5 / len(threads))
            assert time.monotonic() - t0 < 120, "the spray took too long"
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    took = time.monotonic() - t0

    refused = sum(cn.get(b"401", 0) for cn in counts)
    assert refused == total, counts
    assert good and all(s == 200 for s in good), good

    # each unknown key cost one lookup at most
    lookups = redis.commandstats().get("hmget", 0) - before
    assert lookups <= total, lookups
    print("spray: %d unknown keys in %.1f s, %d HMGETs, good key %d/%d"
          % (total, took, lookups, good.count(200), len(good)))

    # Redis gone: the good key still authenticates (stale_if_error)
    redis.stop()
    for _ in range(10):
        assert requests.get(gw.url("/api/ok"), headers=auth).status_code \
            == 200
