"""A clean start (issue 12, item 7): with Debian's other dynamic modules
loaded before apigw (perl, geoip, image filter, xslt, mail, stream: their
init_process takes time), no worker logs an error, and requests sent the
moment nginx is up are answered without a Redis failure."""

import hashlib
import os
import pathlib

import pytest
import requests

KEY = "live_" + "S" * 40

CONF = """
# a configuration that takes the master a while to load, as large ones do
# (a big geo table): the workers are forked with a cached time that much
# behind, more than the connect timeout
include {tmp}/geo.conf;

apigw on;
apigw_redis 127.0.0.1:{redis_port} timeout=100ms connect_timeout=100ms;
apigw_rate_limit_zone per_tenant rate=1000r/s burst=1000 fail=closed;

server {
    listen 127.0.0.1:{port};
    location /api/ {
        apigw_auth on;
        apigw_rate_limit per_tenant;
        proxy_pass http://127.0.0.1:{upstream_port}/;
    }
}
"""

# Debian's dynamic modules the Makefile installs (libnginx-mod-*), the
# stream and mail cores before the modules that need their symbols; other
# packages' modules (lua needs ndk first, ...) are left alone
MODULES = [m for m in ("/usr/lib/nginx/modules/%s.so" % n for n in (
    "ngx_stream_module", "ngx_mail_module", "ngx_http_geoip_module",
    "ngx_http_image_filter_module", "ngx_http_perl_module",
    "ngx_http_xslt_filter_module", "ngx_stream_geoip_module"))
    if os.path.exists(m)]


@pytest.mark.skipif(not MODULES, reason="no other dynamic modules here")
@pytest.mark.parametrize("workers", [1, 2])
def test_start_with_other_modules_logs_no_error(nginx_factory, redis,
                                                upstream, workers):
    h = "apigw:key:" + hashlib.sha256(KEY.encode()).hexdigest()
    redis.client().hset(h, mapping={
        "key_id": "key_s", "tenant": "acme", "scopes": "",
        "status": "active", "account_status": "active"})
    main = "\n".join("load_module %s;" % m for m in MODULES)
    geo = ["geo $slow_start {", "    default 0;"]
    geo += ["    10.%d.%d.%d/32 1;" % (i >> 16 & 255, i >> 8 & 255, i & 255)
            for i in range(300000)]
    geo.append("}")
    for attempt in range(3):   # a race: more starts, more chances
        gw = nginx_factory(CONF, redis=redis, upstream=upstream,
                           main_conf=main, worker_processes=workers,
                           log_level="info", start=False)
        (pathlib.Path(gw.dir) / "geo.conf").write_text("\n".join(geo))
        gw.start()
        # the first requests, the moment the workers are up
        got = [requests.get(gw.url("/api/echo"),
                            headers={"Authorization": "Bearer " + KEY})
               for _ in range(20)]
        assert [r.status_code for r in got] == [200] * 20, \
            [r.content for r in got if r.status_code != 200][:2]
        errors = [ln for ln in gw.error_log().splitlines()
                  if "[error]" in ln or "[crit]" in ln or "[alert]" in ln]
        assert errors == [], errors
        gw.stop()
