"""The five built-in envelope formats, a custom template and a catalog
override, exact on the wire; broken templates and catalogs refused by
nginx -t with the file and the problem named."""

import json

import pytest
import requests

FORMATS_CONF = """
apigw on;
apigw_error_doc_base https://docs.example.com/e/;
%(http_extra)s

server {
    listen 127.0.0.1:{port};
    location /error_object/ { apigw_error_format error_object; %(loc)s }
    location /problem_json/ { apigw_error_format problem_json; %(loc)s }
    location /data_error_meta/ { apigw_error_format data_error_meta; %(loc)s }
    location /error_details/ { apigw_error_format error_details; %(loc)s }
    location /message_errors/ { apigw_error_format message_errors; %(loc)s }
    location /custom/ { apigw_error_template {tmp}/custom.json; %(loc)s }
}
"""

LOC = "proxy_pass http://127.0.0.1:{upstream_port}/;"

CUSTOM = {
    "ok": False,
    "failure": {"kind": "$type", "id": "$code", "text": "$message",
                "http": "$status", "help": "$doc_url|https://help/",
                "retry": "$details.retry_after", "trace": "$correlation_id"},
    "rid": "$request_id",
    "fixed": [1, "two", None],
}


@pytest.fixture
def gw(nginx_factory, upstream, tmp_path):
    d = tmp_path / "nginx0"
    d.mkdir(exist_ok=True)
    (d / "custom.json").write_text(json.dumps(CUSTOM))
    return nginx_factory(FORMATS_CONF % {"http_extra": "", "loc": LOC},
                         upstream=upstream)


def get(gw, path, rid):
    return requests.get(gw.url(path), headers={"X-Request-Id": rid})


EXPECTED_404 = {
    "error_object":
        '{"error":{"type":"not_found_error","code":"not_found","message":'
        '"The requested resource was not found.","doc_url":'
        '"https://docs.example.com/e/not_found"},"request_id":"r1"}',
    "problem_json":
        '{"type":"https://docs.example.com/e/not_found","title":"Not found",'
        '"status":404,"detail":"The requested resource was not found.",'
        '"code":"not_found","request_id":"r1"}',
    "data_error_meta":
        '{"data":null,"error":"not_found","meta":{"request_id":"r1",'
        '"message":"The requested resource was not found."}}',
    "error_details":
        '{"error":{"code":"not_found","message":"The requested resource was '
        'not found.","request_id":"r1"}}',
    "message_errors":
        '{"message":"The requested resource was not found.","code":'
        '"not_found","request_id":"r1"}',
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED_404))
def test_builtin_formats_404(gw, fmt):
    r = get(gw, "/%s/status/404?shape=html" % fmt, "r1")
    assert r.status_code == 404
    assert r.content == EXPECTED_404[fmt].encode(), r.content
    ctype = ("application/problem+json" if fmt == "problem_json"
             else "application/json")
    assert r.headers["Content-Type"] == ctype
    assert int(r.headers["Content-Length"]) == len(r.content)


EXPECTED_502_FIELDS = {
    "error_object":
        '{"error":{"type":"api_error","code":"upstream_unavailable",'
        '"message":"The upstream service is unavailable.","doc_url":'
        '"https://docs.example.com/e/upstream_unavailable",'
        '"correlation_id":"r2"},"request_id":"r2"}',
    "problem_json":
        '{"type":"https://docs.example.com/e/upstream_unavailable",'
        '"title":"Upstream unavailable","status":502,"detail":"The upstream '
        'service is unavailable.","code":"upstream_unavailable",'
        '"request_id":"r2","correlation_id":"r2"}',
    "data_error_meta":
        '{"data":null,"error":"upstream_unavailable","meta":{"request_id":'
        '"r2","correlation_id":"r2","message":"The upstream service is '
        'unavailable."}}',
    "error_details":
        '{"error":{"code":"upstream_unavailable","message":"The upstream '
        'service is unavailable.","request_id":"r2","correlation_id":"r2"}}',
    "message_errors":
        '{"message":"The upstream service is unavailable.","code":'
        '"upstream_unavailable","request_id":"r2","correlation_id":"r2"}',
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED_502_FIELDS))
def test_builtin_formats_5xx_carry_correlation_id(gw, fmt):
    r = get(gw, "/%s/status/502?shape=text" % fmt, "r2")
    assert r.status_code == 502
    assert r.content == EXPECTED_502_FIELDS[fmt].encode(), r.content


EXPECTED_422_ERRORS = {
    "error_object":
        '{"error":{"type":"invalid_request_error","code":"invalid_request",'
        '"message":"Validation failed","doc_url":'
        '"https://docs.example.com/e/invalid_request","errors":[{"field":'
        '"email","message":"is invalid"}]},"request_id":"r3"}',
    "message_errors":
        '{"message":"Validation failed","code":"invalid_request","errors":'
        '[{"field":"email","message":"is invalid"}],"request_id":"r3"}',
}


@pytest.mark.parametrize("fmt", sorted(EXPECTED_422_ERRORS))
def test_field_errors_in_formats(gw, fmt):
    r = get(gw, "/%s/status/400?shape=message_errors" % fmt, "r3")
    assert r.status_code == 400
    assert r.content == EXPECTED_422_ERRORS[fmt].encode(), r.content


def test_custom_template(gw):
    r = get(gw, "/custom/status/503?shape=html", "r4")
    assert r.status_code == 503
    assert r.content == (
        b'{"ok":false,"failure":{"kind":"api_error","id":'
        b'"service_unavailable","text":"The service is temporarily '
        b'unavailable.","http":503,"help":'
        b'"https://docs.example.com/e/service_unavailable","trace":"r4"},'
        b'"rid":"r4","fixed":[1,"two",null]}'), r.content


def test_custom_template_in_shape_passes(gw):
    # an upstream already speaking the custom shape is kept
    r = get(gw, "/custom/status/409?shape=json", "r5")
    assert r.status_code == 409
    doc = json.loads(r.content)
    assert doc["failure"]["id"] == "conflict"


CATALOG = {
    "not_found": {"code": "simio_not_found", "status": 410,
                  "doc_url": "https://simio.example/docs/nf",
                  "message": "Nothing here."},
    "upstream_unavailable": {"code": "simio_backend_down",
                             "title": "Backend down"},
}


def test_catalog_override_on_the_wire(nginx_factory, upstream, tmp_path):
    d = tmp_path / "cat"
    d.mkdir()
    (d / "catalog.json").write_text(json.dumps(CATALOG))
    conf = """
        apigw on;
        apigw_error_catalog %s/catalog.json;
        server {
            listen 127.0.0.1:{port};
            location /api/ { proxy_pass http://127.0.0.1:{upstream_port}/; }
            location /pj/ {
                apigw_error_format problem_json;
                proxy_pass http://127.0.0.1:{upstream_port}/;
            }
        }""" % d
    n = nginx_factory(conf, upstream=upstream)
    r = get(n, "/api/status/404?shape=html", "c1")
    # the status comes from the upstream; the renamed code and doc_url show
    assert r.status_code == 404
    assert r.content == (
        b'{"error":{"type":"not_found_error","code":"simio_not_found",'
        b'"message":"Nothing here.","doc_url":'
        b'"https://simio.example/docs/nf"},"request_id":"c1"}'), r.content
    # nginx's own 404 takes the catalog's status too
    r = get(n, "/nowhere", "c2")
    assert r.status_code == 404
    assert json.loads(r.content)["error"]["code"] == "simio_not_found"
    r = get(n, "/pj/status/502?shape=text", "c3")
    doc = json.loads(r.content)
    assert doc["code"] == "simio_backend_down"
    assert doc["title"] == "Backend down"


def test_catalog_status_override_for_module_errors(nginx_factory, tmp_path):
    d = tmp_path / "cat2"
    d.mkdir()
    (d / "catalog.json").write_text(json.dumps({
        "missing_credentials": {"code": "simio_no_key", "status": 403}}))
    n = nginx_factory("""
        apigw on;
        apigw_redis 127.0.0.1:1;
        apigw_error_catalog %s/catalog.json;
        server {
            listen 127.0.0.1:{port};
            location / { apigw_auth on; proxy_pass http://127.0.0.1:1; }
        }""" % d)
    r = get(n, "/", "c4")
    assert r.status_code == 403
    assert json.loads(r.content)["error"]["code"] == "simio_no_key"
    n.allow_log(r"redis|connect")


BROKEN = [
    ("template", "{not json", "invalid error template"),
    ("template", "[1, 2]", "invalid error template"),
    ("template", '{"a": "$nonsense"}', "$nonsense"),
    ("template", '{"a": 1}', "invalid error template"),
    ("catalog", '{"no_such_code": {"message": "x"}}', "no_such_code"),
    ("catalog", '{"not_found": {"status": 200}}', "invalid error catalog"),
    ("catalog", '{"not_found": {"code": "bad code!"}}',
     "invalid error catalog"),
    ("catalog", "{broken", "invalid error catalog"),
]


@pytest.mark.parametrize("kind,text,needle", BROKEN)
def test_nginx_t_refuses_broken_files(nginx_factory, tmp_path, kind, text,
                                      needle):
    d = tmp_path / "bad"
    d.mkdir()
    f = d / ("bad-%s.json" % kind)
    f.write_text(text)
    directive = ("apigw_error_template" if kind == "template"
                 else "apigw_error_catalog")
    n = nginx_factory("apigw on; %s %s; server { listen 127.0.0.1:{port}; }"
                      % (directive, f), start=False)
    rc, out = n.test_config()
    assert rc != 0
    assert str(f) in out
    assert needle in out, out


def test_nginx_t_refuses_missing_file_and_bad_format(nginx_factory,
                                                     tmp_path):
    n = nginx_factory("apigw_error_template /nonexistent/t.json; "
                      "server { listen 127.0.0.1:{port}; }", start=False)
    rc, out = n.test_config()
    assert rc != 0 and "/nonexistent/t.json" in out
    n = nginx_factory("apigw_error_format fancy; "
                      "server { listen 127.0.0.1:{port}; }", start=False)
    rc, out = n.test_config()
    assert rc != 0 and 'unknown error format "fancy"' in out
