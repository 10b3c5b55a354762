"""Request ids: kept when valid, replaced when not (CSPRNG, req_ + 24 hex),
sent upstream, returned on every response, in $apigw_request_id; hostile
values never reach a header or an envelope."""

import json
import re

import pytest
import requests

from harness import parse_raw_response, raw_request

CONF = """
apigw on;
server {
    listen 127.0.0.1:{port};
    location /api/ {
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /var/ {
        proxy_set_header X-Seen-Id $apigw_request_id;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location = /static {
        return 200 "static\\n";
    }
}
"""

GENERATED = re.compile(r"^req_[0-9a-f]{24}$")


@pytest.fixture
def gw(nginx_factory, upstream):
    return nginx_factory(CONF, upstream=upstream)


@pytest.mark.parametrize("value", ["a", "abc-DEF_1.2:3", "x" * 128,
                                   "550e8400-e29b-41d4-a716-446655440000"])
def test_valid_id_kept_everywhere(gw, value):
    r = requests.get(gw.url("/api/echo"), headers={"X-Request-Id": value})
    assert r.status_code == 200
    assert r.headers["X-Request-Id"] == value
    assert r.json()["headers"]["x-request-id"] == value
    r = requests.get(gw.url("/api/status/404"),
                     headers={"X-Request-Id": value})
    assert json.loads(r.content)["request_id"] == value


@pytest.mark.parametrize("value", ["", "x" * 129, "has space", "semi;colon",
                                   'quo"te', "back\\slash", "caf\u00e9",
                                   "a/b", "{json}"])
def test_invalid_id_replaced(gw, value):
    r = requests.get(gw.url("/api/echo"),
                     headers={"X-Request-Id": value.encode("utf-8")})
    new = r.headers["X-Request-Id"]
    assert GENERATED.match(new), new
    seen = r.json()["headers"]
    assert seen["x-request-id"] == new


def test_missing_id_generated_and_unique(gw):
    ids = set()
    for _ in range(200):
        r = requests.get(gw.url("/static"))
        assert r.status_code == 200
        assert GENERATED.match(r.headers["X-Request-Id"])
        ids.add(r.headers["X-Request-Id"])
    assert len(ids) == 200


def test_ids_unique_across_workers(nginx_factory, upstream):
    n = nginx_factory(CONF, upstream=upstream, worker_processes=2)
    ids = set()
    for _ in range(100):
        r = requests.get(n.url("/static"), headers={"Connection": "close"})
        ids.add(r.headers["X-Request-Id"])
    assert len(ids) == 100


def test_duplicate_headers_collapse_to_one_upstream(gw):
    data = raw_request(gw.port, b"GET /api/echo HTTP/1.1\r\nHost: x\r\n"
                                b"X-Request-Id: first\r\n"
                                b"X-Request-Id: second\r\n"
                                b"Connection: close\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert status == 200
    assert headers["x-request-id"] == ["first"]
    assert json.loads(body)["headers"]["x-request-id"] == "first"


def test_hostile_raw_bytes_replaced(gw):
    for bad in (b"ab\xff\xfe", b"a\"b", b"a\\b", b"<script>",
                b"a\tb", b"\xc3\x28"):
        data = raw_request(gw.port, b"GET /api/status/400 HTTP/1.1\r\n"
                                    b"Host: x\r\nX-Request-Id: " + bad +
                                    b"\r\nConnection: close\r\n\r\n")
        status, headers, body = parse_raw_response(data)
        assert status == 400
        rid = headers["x-request-id"][0]
        assert GENERATED.match(rid), rid
        assert json.loads(body.decode("utf-8"))["request_id"] == rid


def test_upstream_id_header_overridden(gw):
    r = requests.get(gw.url("/api/headers?h=X-Request-Id:from-upstream"),
                     headers={"X-Request-Id": "mine"})
    assert r.headers["X-Request-Id"] == "mine"
    raw = raw_request(gw.port, b"GET /api/headers?h=X-Request-Id:up HTTP/1.1"
                               b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    status, headers, body = parse_raw_response(raw)
    assert len(headers["x-request-id"]) == 1


def test_variable_equals_header(gw):
    r = requests.get(gw.url("/var/echo"), headers={"X-Request-Id": "v-1"})
    assert r.json()["headers"]["x-seen-id"] == "v-1"
    r = requests.get(gw.url("/var/echo"))
    assert r.json()["headers"]["x-seen-id"] == r.headers["X-Request-Id"]


def test_access_log_variable(gw):
    requests.get(gw.url("/static"), headers={"X-Request-Id": "log-me"})
    assert "rid=log-me" in gw.wait_log(r"log-me")
