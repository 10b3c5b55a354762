"""conf-examples/demo.conf is a working config: the locations `make run`
advertises answer as its comments say."""

import hashlib
import json

import requests

from harness import free_port

KEY = "demo_" + "Z" * 43


def test_demo_conf(nginx_factory, redis, upstream):
    n = nginx_factory.example("demo", redis=redis, upstream=upstream,
                              dead_port=free_port())
    r = requests.get(n.url("/api/echo"), headers={"X-Request-Id": "d1"})
    assert r.status_code == 200 and r.headers["X-Request-Id"] == "d1"
    r = requests.get(n.url("/nope"))
    assert json.loads(r.content)["error"]["code"] == "not_found"
    r = requests.get(n.url("/down/"))
    assert json.loads(r.content)["error"]["code"] == "upstream_unavailable"
    r = requests.get(n.url("/problem/status/500?shape=html"))
    assert r.headers["Content-Type"] == "application/problem+json"
    r = requests.get(n.url("/raw/status/500?shape=html"))
    assert b"<html" in r.content

    r = requests.get(n.url("/v1/echo"))
    assert json.loads(r.content)["error"]["code"] == "missing_credentials"
    h = "apigw:key:" + hashlib.sha256(KEY.encode()).hexdigest()
    redis.client().hset(h, mapping={
        "key_id": "demo-key", "tenant": "demo", "scopes": "read write",
        "status": "active", "account_status": "active"})
    auth = {"Authorization": "Bearer " + KEY}
    r = requests.get(n.url("/v1/echo"), headers=auth)
    assert r.status_code == 200
    assert r.json()["headers"]["x-apigw-tenant"] == "demo"
    pay = dict(auth, **{"Idempotency-Key": "order-1"})
    r1 = requests.post(n.url("/v1/payments/charge"), data="5", headers=pay)
    r2 = requests.post(n.url("/v1/payments/charge"), data="5", headers=pay)
    assert r1.status_code == r2.status_code == 201
    assert r1.content == r2.content
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert upstream.counts()["payments/charge"] == 1
    r = requests.get(n.url("/v1/admin/echo"), headers=auth)
    assert json.loads(r.content)["error"]["code"] == "scope_required"
    n.allow_log(r"connect\(\) failed")
