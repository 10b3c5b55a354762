"""The conf-examples/ convention, shared by tools/demo.py and the test
harness (t/integration/harness.py).

Every file in conf-examples/ is a complete nginx.conf run as
`nginx -p <prefix>/ -c <file>`, with literal loopback ports and the
installed path of the module; rewrite() turns those into the ports and the
module a run actually uses:

    listen 127.0.0.1:8080   nginx                      -> port (listen_host)
    127.0.0.1:6390          redis-server (apigw_redis) -> redis_port
    127.0.0.1:9090          tools/demo_upstream.py     -> upstream_port
    127.0.0.1:9091          nothing listens (a down upstream) -> dead_port
    load_module .../ngx_http_apigw_module.so;          -> module_path
"""

import re

PORT, REDIS_PORT, UPSTREAM_PORT, DEAD_PORT = 8080, 6390, 9090, 9091

MODULE_RE = re.compile(
    r"^([ \t]*load_module\s+)\S*ngx_http_apigw_module\.so(\s*;)", re.M)
APIGW_DIRECTIVE_RE = re.compile(r"^[ \t]*apigw\w*(\s[^\n]*)?;[^\n]*\n", re.M)
APIGW_VARIABLE_RE = re.compile(r"\$apigw_\w+")


def rewrite(text, *, port=None, redis_port=None, upstream_port=None,
            dead_port=None, module_path=None, listen_host=None,
            without_module=False):
    """Returns text with the convention's literals replaced; a None
    argument leaves that literal alone.  without_module=True comments out
    load_module and every apigw* directive and turns $apigw_* variables
    into "-": the plain-nginx skeleton of the example, for checking the
    rest of a setup before the module builds."""
    if listen_host is not None:
        text = re.sub(r"(\blisten\s+)127\.0\.0\.1:%d\b" % PORT,
                      lambda m: "%s%s:%d" % (m.group(1), listen_host,
                                             port or PORT), text)

    def ports(literal, new):
        nonlocal text
        if new is not None:
            text = re.sub(r"\b(127\.0\.0\.1|localhost):%d\b" % literal,
                          lambda m: "%s:%d" % (m.group(1), new), text)
    ports(PORT, port)
    ports(REDIS_PORT, redis_port)
    ports(UPSTREAM_PORT, upstream_port)
    ports(DEAD_PORT, dead_port)
    if without_module:
        text = MODULE_RE.sub(lambda m: "# (without module) " + m.group(0),
                             text)
        text = APIGW_DIRECTIVE_RE.sub(
            lambda m: "# (without module) " + m.group(0).lstrip(), text)
        text = APIGW_VARIABLE_RE.sub("-", text)
    elif module_path is not None:
        text = MODULE_RE.sub(
            lambda m: m.group(1) + module_path + m.group(2), text)
    return text
