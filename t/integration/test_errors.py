"""Envelopes for nginx's own errors and for upstream errors, produced for
real: an upstream port with nothing listening, an upstream that sleeps past
proxy_read_timeout, HTML pages, foreign JSON shapes, 2 MB bodies, chunked
bodies; success responses pass byte-for-byte."""

import json

import pytest
import requests

from harness import det_bytes, free_port, parse_raw_response, raw_request

DOCS = "https://docs.example.com/errors/"

CONF = """
apigw on;
apigw_error_doc_base %s;

server {
    listen 127.0.0.1:{port};
    client_max_body_size 1k;
    proxy_read_timeout 1s;

    location /api/ {
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /rewrite/ {
        apigw_upstream_errors rewrite;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /pass/ {
        apigw_upstream_errors pass;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
    location /dead/ {
        proxy_pass http://127.0.0.1:{dead_port}/;
    }
    location /static/ {
        root {tmp};
    }
    location = /boom {
        return 500;
    }
    location = /maint {
        return 503;
    }
    location = /text404 {
        return 404 "<html>custom</html>";
    }
    location = /off {
        apigw off;
        return 404;
    }
    location /off-api/ {
        apigw off;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
""" % DOCS


@pytest.fixture
def gw(nginx_factory, upstream, tmp_path):
    (tmp_path / "static").mkdir(exist_ok=True)
    n = nginx_factory(CONF, upstream=upstream,
                      vars={"dead_port": free_port(),
                            "tmp": str(tmp_path)})
    (tmp_path / "static" / "file.txt").write_text("hello\n")
    return n


def rid(name):
    return {"X-Request-Id": name}


def envelope(code, etype, message, request_id, extra=None, status=None,
             doc=True):
    """The error_object bytes the module must produce."""
    err = '"type":%s,"code":%s,"message":%s' % (
        json.dumps(etype), json.dumps(code), json.dumps(message))
    if doc:
        err += ',"doc_url":%s' % json.dumps(DOCS + code)
    if extra:
        err += "," + extra
    if status is not None and status >= 500:
        err += ',"correlation_id":%s' % json.dumps(request_id)
    return ('{"error":{%s},"request_id":%s}' % (
        err, json.dumps(request_id))).encode()


def check_envelope_response(r, status, body):
    assert r.status_code == status
    assert r.headers["Content-Type"] == "application/json"
    assert int(r.headers["Content-Length"]) == len(r.content)
    assert r.content == body, r.content
    json.loads(r.content)


# nginx's own errors

def test_404_no_route(gw):
    r = requests.get(gw.url("/nowhere"), headers=rid("t-404"))
    check_envelope_response(r, 404, envelope(
        "not_found", "not_found_error",
        "The requested resource was not found.", "t-404"))
    assert r.headers["X-Request-Id"] == "t-404"


def test_404_content_handler_text_is_replaced(gw):
    r = requests.get(gw.url("/text404"), headers=rid("t-txt"))
    check_envelope_response(r, 404, envelope(
        "not_found", "not_found_error",
        "The requested resource was not found.", "t-txt"))


def test_405_static_post(gw):
    r = requests.post(gw.url("/static/file.txt"), data="x",
                      headers=rid("t-405"))
    check_envelope_response(r, 405, envelope(
        "method_not_allowed", "invalid_request_error",
        "The method is not allowed for this resource.", "t-405"))


def test_413_body_over_client_max_body_size(gw):
    r = requests.post(gw.url("/api/echo"), data=b"x" * 4096,
                      headers=rid("t-413"))
    check_envelope_response(r, 413, envelope(
        "payload_too_large", "invalid_request_error",
        "The request body is too large.", "t-413"))


def test_500_and_503_from_nginx(gw):
    r = requests.get(gw.url("/boom"), headers=rid("t-500"))
    check_envelope_response(r, 500, envelope(
        "internal_error", "api_error", "An unexpected error occurred.",
        "t-500", status=500))
    r = requests.get(gw.url("/maint"), headers=rid("t-503"))
    check_envelope_response(r, 503, envelope(
        "service_unavailable", "api_error",
        "The service is temporarily unavailable.", "t-503", status=503))


def test_502_upstream_refused(gw):
    r = requests.get(gw.url("/dead/x"), headers=rid("t-502"))
    check_envelope_response(r, 502, envelope(
        "upstream_unavailable", "api_error",
        "The upstream service is unavailable.", "t-502", status=502))
    gw.allow_log(r"connect\(\) failed")


def test_504_upstream_timeout(gw):
    r = requests.get(gw.url("/api/sleep/3000"), headers=rid("t-504"),
                     timeout=10)
    check_envelope_response(r, 504, envelope(
        "upstream_timeout", "api_error",
        "The upstream service did not respond in time.", "t-504",
        status=504))
    gw.allow_log(r"timed out")


def test_400_bad_request_line(gw):
    data = raw_request(gw.port, b"GARBAGE\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert status == 400
    doc = json.loads(body)
    assert doc["error"]["code"] == "invalid_request"
    assert doc["error"]["type"] == "invalid_request_error"
    assert doc["request_id"].startswith("req_")
    assert headers["x-request-id"] == [doc["request_id"]]
    assert headers["content-type"] == ["application/json"]
    assert int(headers["content-length"][0]) == len(body)


def test_400_bad_header(gw):
    data = raw_request(gw.port, b"GET / HTTP/1.1\r\nHost: a\r\n"
                                b"Bad\x01Header: x\r\n\r\n")
    status, headers, body = parse_raw_response(data)
    assert status == 400
    assert json.loads(body)["error"]["code"] == "invalid_request"


def test_head_gets_headers_only(gw):
    r = requests.head(gw.url("/nowhere"), headers=rid("t-head"))
    assert r.status_code == 404
    assert r.content == b""
    full = envelope("not_found", "not_found_error",
                    "The requested resource was not found.", "t-head")
    assert int(r.headers["Content-Length"]) == len(full)
    assert r.headers["Content-Type"] == "application/json"


def test_apigw_off_leaves_nginx_page(gw):
    r = requests.get(gw.url("/off"))
    assert r.status_code == 404
    assert r.headers["Content-Type"].startswith("text/html")
    assert "X-Request-Id" not in r.headers


# success passes untouched

def test_success_byte_for_byte(gw, upstream):
    r = requests.get(gw.url("/api/bytes/100000"), headers=rid("t-ok"))
    assert r.status_code == 200
    assert r.content == det_bytes(100000)
    assert r.headers["X-Request-Id"] == "t-ok"
    r = requests.get(gw.url("/api/ok"))
    assert r.content == b'{"ok":true}'
    assert r.headers["X-Request-Id"].startswith("req_")


# upstream errors: normalize (the default)

def test_upstream_html_500_normalized(gw):
    r = requests.get(gw.url("/api/status/500?shape=html"),
                     headers=rid("t-html"))
    check_envelope_response(r, 500, envelope(
        "internal_error", "api_error", "An unexpected error occurred.",
        "t-html", status=500))


@pytest.mark.parametrize("shape", ["text", "empty", "chunked", "big"])
def test_upstream_non_json_bodies_replaced(gw, shape):
    r = requests.get(gw.url("/api/status/502?shape=%s" % shape),
                     headers=rid("t-" + shape))
    check_envelope_response(r, 502, envelope(
        "upstream_unavailable", "api_error",
        "The upstream service is unavailable.", "t-" + shape, status=502))


def test_upstream_503_retry_after_kept(gw):
    r = requests.get(gw.url("/api/status/503?shape=html&retry_after=17"),
                     headers=rid("t-ra"))
    check_envelope_response(r, 503, envelope(
        "service_unavailable", "api_error",
        "The service is temporarily unavailable.", "t-ra", status=503))
    assert r.headers["Retry-After"] == "17"


def test_upstream_fastapi_list(gw):
    r = requests.get(gw.url("/api/status/422?shape=fastapi"),
                     headers=rid("t-fa"))
    check_envelope_response(r, 422, envelope(
        "unprocessable_entity", "invalid_request_error", "field required",
        "t-fa", extra='"errors":[{"field":"amount","message":"field required",'
                      '"code":"value_error.missing"}]'))


def test_upstream_fastapi_string(gw):
    r = requests.get(gw.url("/api/status/404?shape=fastapi_str"),
                     headers=rid("t-fs"))
    check_envelope_response(r, 404, envelope(
        "not_found", "not_found_error", "Item not found", "t-fs"))


def test_upstream_message_errors(gw):
    r = requests.get(gw.url("/api/status/400?shape=message_errors"),
                     headers=rid("t-me"))
    check_envelope_response(r, 400, envelope(
        "invalid_request", "invalid_request_error", "Validation failed",
        "t-me", extra='"errors":[{"field":"email","message":"is invalid"}]'))


def test_upstream_error_string_shape(gw):
    r = requests.get(gw.url("/api/status/402?shape=error_str"),
                     headers=rid("t-ec"))
    check_envelope_response(r, 402, envelope(
        "card_declined", "invalid_request_error", "Your card was declined.",
        "t-ec"))


def test_error_code_variable_keeps_upstream_code(gw):
    """$apigw_error_code of a foreign code: the analysis that held it is
    freed before the log phase (was a use after free: err=x\x00...)."""
    r = requests.get(gw.url("/api/status/402?shape=error_str"),
                     headers=rid("t-lc"))
    assert r.status_code == 402
    line = gw.wait_log(r"rid=t-lc ")
    assert " err=card_declined " in line, line


def test_upstream_already_in_shape_passes_with_request_id(gw):
    # {"error":{"code","message"}} is the error_object shape itself
    r = requests.get(gw.url("/api/status/402?shape=error_obj"),
                     headers=rid("t-eo"))
    check_envelope_response(r, 402, (
        b'{"error":{"code":"card_declined","message":"Your card was '
        b'declined."},"request_id":"t-eo"}'))


def test_upstream_error_object_shape_translated_for_other_format(
        nginx_factory, upstream):
    n = nginx_factory("""
        apigw on;
        server {
            listen 127.0.0.1:{port};
            location / {
                apigw_error_format error_details;
                proxy_pass http://127.0.0.1:{upstream_port};
            }
        }""", upstream=upstream)
    r = requests.get(n.url("/status/402?shape=error_obj"),
                     headers=rid("t-ed"))
    check_envelope_response(r, 402, (
        b'{"error":{"code":"card_declined","message":"Your card was '
        b'declined.","request_id":"t-ed"}}'))


def test_upstream_problem_json(gw):
    r = requests.get(gw.url("/api/status/403?shape=problem"),
                     headers=rid("t-pj"))
    body = ('{"error":{"type":"permission_error","code":"out_of_credit",'
            '"message":"Your current balance is 30, but that costs 50.",'
            '"doc_url":"https://example.com/probs/out-of-credit"},'
            '"request_id":"t-pj"}').encode()
    check_envelope_response(r, 403, body)


def test_upstream_in_shape_gets_request_id(gw):
    r = requests.get(gw.url("/api/status/409?shape=apigw"),
                     headers=rid("t-in"))
    assert r.status_code == 409
    doc = json.loads(r.content)
    assert doc["request_id"] == "t-in"
    assert doc["error"]["message"].startswith("Upstream says")
    assert int(r.headers["Content-Length"]) == len(r.content)


def test_upstream_hostile_json_stays_valid(gw):
    r = requests.get(gw.url("/api/status/400?shape=hostile"),
                     headers=rid("t-h1"))
    assert r.status_code == 400
    doc = json.loads(r.content)
    assert "\r\n" in doc["error"]["message"]
    assert int(r.headers["Content-Length"]) == len(r.content)
    for h in r.headers:
        assert "line2" not in r.headers[h]


def test_upstream_hostile_bytes_stays_valid(gw):
    r = requests.get(gw.url("/api/status/400?shape=hostile_bytes"),
                     headers=rid("t-h2"))
    assert r.status_code == 400
    doc = json.loads(r.content.decode("utf-8"))
    assert doc["request_id"] == "t-h2"


def test_upstream_head_error(gw):
    r = requests.head(gw.url("/api/status/500?shape=html"),
                      headers=rid("t-uh"))
    assert r.status_code == 500
    assert r.content == b""
    full = envelope("internal_error", "api_error",
                    "An unexpected error occurred.", "t-uh", status=500)
    assert int(r.headers["Content-Length"]) == len(full)


# rewrite and pass

def test_rewrite_replaces_foreign_json(gw):
    r = requests.get(gw.url("/rewrite/status/402?shape=error_str"),
                     headers=rid("t-rw"))
    check_envelope_response(r, 402, envelope(
        "client_error", "invalid_request_error",
        "The request could not be processed.", "t-rw"))


def test_pass_leaves_body(gw):
    r = requests.get(gw.url("/pass/status/500?shape=html"),
                     headers=rid("t-pass"))
    assert r.status_code == 500
    assert r.headers["Content-Type"].startswith("text/html")
    assert b"<html" in r.content
    assert r.headers["X-Request-Id"] == "t-pass"


def test_module_off_location_passes_upstream_error(gw):
    r = requests.get(gw.url("/off-api/status/500?shape=html"))
    assert r.status_code == 500
    assert b"<html" in r.content


# keepalive survives an enveloped upstream error

def test_keepalive_after_captured_error(gw):
    s = requests.Session()
    for i in range(5):
        r = s.get(gw.url("/api/status/500?shape=big"), headers=rid("k%d" % i))
        assert r.status_code == 500
        assert json.loads(r.content)["request_id"] == "k%d" % i
        r = s.get(gw.url("/api/ok"))
        assert r.content == b'{"ok":true}'


def test_access_log_has_error_code(gw):
    requests.get(gw.url("/nowhere"), headers=rid("t-log"))
    line = gw.wait_log(r"t-log")
    assert "not_found" in line
