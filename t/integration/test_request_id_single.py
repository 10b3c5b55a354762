"""Exactly one X-Request-Id on every response (issue 12, item 6): apigw's
id wins over `add_header X-Request-Id ...` (with or without `always`) and
over an upstream's own, on success and on every kind of error, and it is
the id in the envelope and the one the upstream received."""

import json

import pytest
import requests

from harness import parse_raw_response, raw_request

CONF = """
apigw on;

server {
    listen 127.0.0.1:{port};
    add_header X-Request-Id $request_id;

    location /api/ {
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /always/ {
        add_header X-Request-Id foo always;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /own/ {
        # an upstream that sets its own X-Request-Id
        proxy_pass http://127.0.0.1:{upstream_port}/headers?h=X-Request-Id:up-1&;
    }
    location = /teapot {
        return 404;
    }
    location /off/ {
        apigw off;
        add_header X-Request-Id $request_id;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
"""


@pytest.fixture
def gw(nginx_factory, upstream):
    return nginx_factory(CONF, upstream=upstream)


def ids(gw, path, rid=None):
    req = b"GET " + path.encode() + b" HTTP/1.1\r\nHost: t\r\n"
    if rid:
        req += b"X-Request-Id: " + rid.encode() + b"\r\n"
    data = raw_request(gw.port, req + b"Connection: close\r\n\r\n",
                       until_close=True)
    status, headers, body = parse_raw_response(data)
    return status, headers.get("x-request-id", []), body


@pytest.mark.parametrize("path", ["/api/echo", "/always/echo",
                                  "/always/status/500?shape=html",
                                  "/own/x", "/teapot", "/nothing",
                                  "/api/status/404?shape=html"])
def test_one_request_id(gw, upstream, path):
    status, got, body = ids(gw, path)
    assert len(got) == 1, (path, got)
    assert got[0].startswith("req_")
    if status >= 400:
        assert json.loads(body)["request_id"] == got[0]
    if path == "/api/echo":
        assert json.loads(body)["headers"]["x-request-id"] == got[0]


def test_kept_client_id_wins_too(gw):
    status, got, body = ids(gw, "/always/echo", rid="client-7")
    assert got == ["client-7"]
    assert json.loads(body)["headers"]["x-request-id"] == "client-7"


def test_apigw_off_leaves_add_header_alone(gw):
    status, got, body = ids(gw, "/off/echo")
    assert status == 200
    assert len(got) == 1
    assert len(got[0]) == 32 and not got[0].startswith("req_")
