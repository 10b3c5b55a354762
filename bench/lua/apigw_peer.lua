-- The Lua peer of the benchmark: API-key auth and a Redis token bucket
-- written the way OpenResty and Kong users write them, with
-- lua-nginx-module and lua-resty-redis, for the "lua-auth-rl" row of
-- bench/bench.py.  It does what apigw's auth + one rate-limit policy do on
-- every request:
--
--   * reads "Authorization: Bearer <key>", hashes the key (SHA-256, hex);
--   * looks the record up in a lua_shared_dict (positive ttl 30 s,
--     negative 5 s), on a miss HMGET <prefix>key:<sha256 hex> from Redis;
--   * checks status, expires_at and account_status like apigw does;
--   * removes Authorization, sends X-Apigw-Key-Id/-Tenant/-Scopes upstream;
--   * runs the token bucket with EVALSHA (the very script apigw loads,
--     handed over by bench.py; on NOSCRIPT it falls back to EVAL) on the
--     key <prefix>{rl:<tenant>}:<policy>, refuses with 429 and Retry-After;
--   * sends X-RateLimit-Limit / -Remaining / -Reset from header_filter.
--
-- Redis connections are pooled per worker with set_keepalive.  Debian's
-- packages name the libraries nginx.redis / nginx.sha256 / nginx.string
-- (upstream: resty.redis / resty.sha256 / resty.string), and Debian's
-- lua-resty-redis 0.27 has set_timeout, not set_timeouts.

local redis = require "nginx.redis"
local resty_sha256 = require "nginx.sha256"

local ok_str, rstr = pcall(require, "resty.string")
if not ok_str then
    rstr = require "nginx.string"
end

local ngx = ngx
local ngx_var = ngx.var
local ngx_req = ngx.req
local ngx_null = ngx.null
local to_hex = rstr.to_hex
local str_find = string.find
local str_match = string.match
local str_sub = string.sub
local concat = table.concat
local tonumber = tonumber
local ceil = math.ceil

local _M = {}

-- the record fields apigw reads, in its order
local FIELDS = { "key_id", "tenant", "scopes", "status", "expires_at",
                 "account_status", "rate", "burst" }
local NFIELDS = #FIELDS
local SEP = "\31"

local conf = {
    redis_host = "127.0.0.1",
    redis_port = 6379,
    timeout_ms = 50,
    keepalive_ms = 60000,
    pool_size = 64,
    prefix = "apigw:",
    cache_ttl = 30,
    negative_ttl = 5,
    policy = "default",
    capacity = 100,
    tokens = 100,
    period_ms = 1000,
    script = nil,        -- the token-bucket script text
    script_sha = nil,    -- its SHA-1 hex
}


function _M.init(c)
    for k, v in pairs(c) do
        conf[k] = v
    end
    if not conf.script then
        if not conf.script_file then
            error("apigw_peer: script or script_file is required")
        end
        local f = assert(io.open(conf.script_file, "rb"))
        conf.script = f:read("*a")
        f:close()
    end
    if not conf.script_sha then
        conf.script_sha = to_hex(ngx.sha1_bin(conf.script))
    end
end


local function envelope(status, etype, code, message, extra)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    if extra then
        for k, v in pairs(extra) do
            ngx.header[k] = v
        end
    end
    ngx.print('{"error":{"type":"', etype, '","code":"', code,
              '","message":"', message, '"},"request_id":"',
              ngx_var.request_id, '"}')
    return ngx.exit(ngx.HTTP_OK)
end


local function redis_connect()
    local red = redis:new()
    red:set_timeout(conf.timeout_ms)
    local ok, err = red:connect(conf.redis_host, conf.redis_port)
    if not ok then
        return nil, err
    end
    return red
end


local function redis_release(red)
    local ok, err = red:set_keepalive(conf.keepalive_ms, conf.pool_size)
    if not ok then
        ngx.log(ngx.WARN, "apigw_peer: set_keepalive: ", err)
    end
end


local function decode(v)
    local rec = {}
    local i, pos = 1, 1
    while i <= NFIELDS do
        local e = str_find(v, SEP, pos, true)
        if not e then
            rec[FIELDS[i]] = str_sub(v, pos)
            break
        end
        rec[FIELDS[i]] = str_sub(v, pos, e - 1)
        pos = e + 1
        i = i + 1
    end
    return rec
end


-- the record of a key hash: a table, false (unknown), or nil and an error
local function lookup(hex, state)
    local cache = ngx.shared.peer_keys
    local v = cache:get(hex)
    if v ~= nil then
        if v == "" then
            return false
        end
        return decode(v)
    end

    local red, err = redis_connect()
    if not red then
        return nil, err
    end
    state.red = red

    local res
    res, err = red:hmget(conf.prefix .. "key:" .. hex, unpack(FIELDS))
    if not res then
        return nil, err
    end

    local vals, found = {}, false
    for i = 1, NFIELDS do
        local x = res[i]
        if x == ngx_null or x == nil then
            x = ""
        elseif x ~= "" then
            found = true
        end
        vals[i] = x
    end

    if not found then
        cache:set(hex, "", conf.negative_ttl)
        return false
    end

    cache:set(hex, concat(vals, SEP), conf.cache_ttl)
    return decode(concat(vals, SEP))
end


-- apigw_key_record_check: "ok", "invalid" or "disabled"
local function judge(rec)
    if rec.key_id == "" or rec.tenant == "" or rec.status ~= "active" then
        return "invalid"
    end
    if rec.expires_at ~= "" then
        local exp = tonumber(rec.expires_at)
        if not exp or exp <= ngx.time() then
            return "invalid"
        end
    end
    if rec.account_status ~= "" and rec.account_status ~= "active" then
        return "disabled"
    end
    return "ok"
end


-- one check of one bucket: 1 parameter set, 1 check of 1 item (key 1,
-- set 1); a peer written the usual way sends one call per request
local function token_bucket(red, tenant)
    local key = conf.prefix .. "{rl:" .. tenant .. "}:" .. conf.policy
    local res, err = red:evalsha(conf.script_sha, 1, key, 1, conf.capacity,
                                 conf.tokens, conf.period_ms, 1, 1, 1, 1, 1)
    if not res and err and str_find(err, "NOSCRIPT", 1, true) then
        res, err = red:eval(conf.script, 1, key, 1, conf.capacity,
                            conf.tokens, conf.period_ms, 1, 1, 1, 1, 1)
    end
    return res, err
end


function _M.access()
    local key = str_match(ngx_var.http_authorization or "",
                          "^%s*[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
    if not key then
        if not ngx_var.http_authorization then
            return envelope(401, "authentication_error",
                            "missing_credentials", "No API key was sent.")
        end
        return envelope(401, "authentication_error", "invalid_credentials",
                        "The API key is not valid.")
    end

    local sha = resty_sha256:new()
    sha:update(key)
    local hex = to_hex(sha:final())

    local state = {}
    local rec, err = lookup(hex, state)

    if rec == nil then
        ngx.log(ngx.ERR, "apigw_peer: key lookup: ", err)
        return envelope(503, "api_error", "auth_unavailable",
                        "Authentication is unavailable.",
                        { ["Retry-After"] = "1" })
    end
    if rec == false then
        if state.red then redis_release(state.red) end
        return envelope(401, "authentication_error", "invalid_credentials",
                        "The API key is not valid.")
    end

    local verdict = judge(rec)
    if verdict ~= "ok" then
        if state.red then redis_release(state.red) end
        if verdict == "disabled" then
            return envelope(401, "authentication_error", "account_disabled",
                            "The account is disabled.")
        end
        return envelope(401, "authentication_error", "invalid_credentials",
                        "The API key is not valid.")
    end

    ngx_req.clear_header("Authorization")
    ngx_req.set_header("X-Apigw-Key-Id", rec.key_id)
    ngx_req.set_header("X-Apigw-Tenant", rec.tenant)
    ngx_req.set_header("X-Apigw-Scopes", rec.scopes)

    -- the token bucket, on every request
    local red = state.red
    if not red then
        red, err = redis_connect()
        if not red then
            -- fail open, like apigw's default
            ngx.log(ngx.ERR, "apigw_peer: rate limiter: ", err)
            return
        end
    end

    local res
    res, err = token_bucket(red, rec.tenant)
    if not res then
        ngx.log(ngx.ERR, "apigw_peer: rate limiter: ", err)
        return   -- the connection is dropped, not pooled, after an error
    end
    redis_release(red)

    -- now_ms, then remaining reset_ms retry_after_ms (0: allowed)
    local now_ms = res[1]
    ngx.ctx.rl = { conf.capacity, res[2], ceil((now_ms + res[3]) / 1000) }

    if res[4] ~= 0 then
        local retry = ceil(res[4] / 1000)
        if retry < 1 then retry = 1 end
        return envelope(429, "rate_limit_error", "rate_limited",
                        "Rate limit exceeded.",
                        { ["Retry-After"] = tostring(retry),
                          ["X-RateLimit-Limit"] = conf.capacity,
                          ["X-RateLimit-Remaining"] = res[2],
                          ["X-RateLimit-Reset"] = ngx.ctx.rl[3] })
    end
end


function _M.header_filter()
    local rl = ngx.ctx.rl
    if rl then
        local h = ngx.header
        h["X-RateLimit-Limit"] = rl[1]
        h["X-RateLimit-Remaining"] = rl[2]
        h["X-RateLimit-Reset"] = rl[3]
    end
end


return _M
