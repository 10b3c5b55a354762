"""Idempotency records stay within one service (issue 12, item 9): the same
tenant, key, path and body sent to two server blocks that proxy to two
backends runs on each backend once and never replays the other's response;
the same server block on two nginx nodes shares its records; an explicit
apigw_idempotency_namespace shares them across server blocks."""

import pytest
import requests

from harness import Upstream, free_port

CONF = """
apigw on;
apigw_redis 127.0.0.1:{redis_port} timeout=300ms;

server {
    listen 127.0.0.1:{port};
    location /api/ {
        apigw_idempotency on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
"""

# the same server block on a second node: another host in production,
# another loopback address here, the same port
NODE2 = CONF.replace("listen 127.0.0.1:{port};", "listen 127.0.0.2:{port};")

CONF += """
server {
    listen 127.0.0.1:{port_a2};
    location /api/ {
        apigw_idempotency on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
server {
    listen 127.0.0.1:{port_b};
    location /api/ {
        apigw_idempotency on;
        proxy_pass http://127.0.0.1:{upstream_b}/;
    }
}
server {
    listen 127.0.0.1:{port_c};
    apigw_idempotency_namespace payments;
    location /api/ {
        apigw_idempotency on;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
server {
    listen 127.0.0.1:{port_d};
    location /api/ {
        apigw_idempotency on;
        apigw_idempotency_namespace payments;
        proxy_pass http://127.0.0.1:{upstream_b}/;
    }
}
"""


def post(port, key, body=b'{"amount":5}', host="127.0.0.1"):
    return requests.post("http://%s:%d/api/count/pay" % (host, port),
                         data=body, timeout=10,
                         headers={"Idempotency-Key": key,
                                  "Content-Type": "application/json"})


@pytest.fixture
def setup(nginx_factory, redis, upstream, tmp_path):
    up_b = Upstream(tmp_path / "upstream_b").start()
    ports = {"port_a2": free_port(), "port_b": free_port(),
             "port_c": free_port(), "port_d": free_port(),
             "upstream_b": up_b.port}
    vars_ = dict((k, str(v)) for k, v in ports.items())
    a = nginx_factory(CONF, redis=redis, upstream=upstream, vars=vars_)
    b = nginx_factory(NODE2, redis=redis, upstream=upstream, port=a.port,
                      start=False)
    b.url = lambda path: "http://127.0.0.2:%d%s" % (a.port, path)
    b.start()
    yield (a, b), ports, up_b
    up_b.stop()


def test_server_blocks_do_not_share_records(setup, upstream):
    (a, _), ports, up_b = setup
    r1 = post(a.port, "order-1")
    r2 = post(ports["port_b"], "order-1")
    assert r1.status_code == r2.status_code == 201
    assert "Idempotent-Replayed" not in r1.headers
    assert "Idempotent-Replayed" not in r2.headers
    assert upstream.counts() == {"pay": 1}
    assert up_b.counts() == {"pay": 1}

    # each replays its own
    r3 = post(ports["port_b"], "order-1")
    assert r3.headers["Idempotent-Replayed"] == "true"
    assert r3.content == r2.content
    r4 = post(a.port, "order-1")
    assert r4.content == r1.content
    assert upstream.counts() == {"pay": 1}
    assert up_b.counts() == {"pay": 1}


def test_same_server_block_on_two_nodes_shares(setup, upstream):
    (a, b), ports, up_b = setup
    r1 = post(a.port, "order-2")
    r2 = post(a.port, "order-2", host="127.0.0.2")
    assert r2.status_code == 201
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert r2.content == r1.content
    assert upstream.counts() == {"pay": 1}


def test_explicit_namespace_shares_across_server_blocks(setup, upstream):
    (a, _), ports, up_b = setup
    r1 = post(ports["port_c"], "order-3")
    r2 = post(ports["port_d"], "order-3")
    assert r2.headers["Idempotent-Replayed"] == "true"
    assert r2.content == r1.content
    assert upstream.counts() == {"pay": 1}
    assert up_b.counts() == {}
    # ... and not with the default-namespaced blocks
    r3 = post(a.port, "order-3")
    assert "Idempotent-Replayed" not in r3.headers
    assert upstream.counts() == {"pay": 2}
