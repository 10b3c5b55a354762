-- wrk script of `make soak` (tools/soak.py): a mix of authenticated GETs
-- (auth + rate limit), POSTs with Idempotency-Keys drawn from a bounded,
-- rotating set (first executions, replays, in-flight conflicts, mismatches)
-- and requests with bad or missing credentials / keys.
--
-- Configuration comes from the environment (read in every wrk Lua state):
--   SOAK_KEY_OK        API key of tenant "soak" (high rate, no admin scope)
--   SOAK_KEY_LOW       API key of tenant "soak-low" (per-key rate: 429s)
--   SOAK_KEY_REVOKED   a revoked key;  SOAK_KEY_DISABLED  a disabled account's
--   SOAK_RUN           run id, part of every Idempotency-Key
--   SOAK_T0            unix time of the start (key windows count from it)
--   SOAK_WINDOW        seconds per key window (the key set rotates)
--   SOAK_POOL          keys per window; SOAK_HOT  of them are "hot"
--   SOAK_HOT_SHARE     share of POSTs that pick a hot key (in-flight 409s)
--   SOAK_SLEEP_MS      upstream run time of a POST (/count/<key>?sleep=)
--   SOAK_DELAY_MS      per-connection pause before each request (0: none;
--                      soak.py derives it from --rate)
--   SOAK_SAMPLE_DIR    where each thread writes its sample of non-2xx
--                      responses (wrk-<n>.samples)
--   SOAK_SAMPLE_FIRST  per kind and status, the first N are written ...
--   SOAK_SAMPLE_EVERY  ... then one in N; SOAK_SAMPLE_CAP  at most per thread
--   SOAK_MIX           "kind=weight,..." overriding the default mix
--
-- Every request carries X-Request-Id "<kind>-<thread>-<n>": nginx keeps a
-- valid incoming id, so response() learns the kind of the request it sees
-- (wrk gives no other correlation) and checks the id came back.
--
-- response() counts statuses per kind, envelope codes per kind (the code is
-- taken from the body), checks cheaply on EVERY non-2xx that the body holds
-- "request_id":"<the X-Request-Id>", and on every 2xx POST that the
-- upstream's counter in the body is 1 ("n":1: a second execution of a key
-- would answer n:2); samples go to a file that soak.py validates fully.
-- done() prints one "SOAK_JSON {...}" line with every thread's counters.

local function env(name, default)
    local v = os.getenv(name)
    if v == nil or v == "" then
        return default
    end
    return v
end

local key_ok = env("SOAK_KEY_OK", "")
local key_low = env("SOAK_KEY_LOW", "")
local key_revoked = env("SOAK_KEY_REVOKED", "")
local key_disabled = env("SOAK_KEY_DISABLED", "")
local run = env("SOAK_RUN", "r")
local t0 = tonumber(env("SOAK_T0", tostring(os.time())))
local window = tonumber(env("SOAK_WINDOW", "10"))
local pool = tonumber(env("SOAK_POOL", "1500"))
local hot = tonumber(env("SOAK_HOT", "10"))
local hot_share = tonumber(env("SOAK_HOT_SHARE", "0.2"))
local sleep_ms = tonumber(env("SOAK_SLEEP_MS", "20"))
local delay_ms = tonumber(env("SOAK_DELAY_MS", "0"))
local sample_dir = env("SOAK_SAMPLE_DIR", ".")
local sample_first = tonumber(env("SOAK_SAMPLE_FIRST", "20"))
local sample_every = tonumber(env("SOAK_SAMPLE_EVERY", "100"))
local sample_cap = tonumber(env("SOAK_SAMPLE_CAP", "4000"))

-- kind -> weight.  Kinds are letters only (they prefix X-Request-Id).
local mix = {
    ok = 52,        -- GET /api/ok, tenant soak: auth (cache) + rate limit
    low = 5,        -- GET /api/ok, tenant soak-low: mostly 429
    nokey = 2,      -- GET /api/ok without Authorization: 401
    badkey = 2,     -- GET /api/ok, well-formed unknown key: 401 (neg. cache)
    malformed = 1,  -- GET /api/ok, a key too short to be one: 401
    revoked = 1,    -- GET /api/ok, revoked key: 401
    disabled = 1,   -- GET /api/ok, key of a disabled account: 401
    noscope = 1,    -- GET /admin/ok, key without "admin": 403
    notfound = 1,   -- GET /nope: 404 from nginx
    post = 29,      -- POST /pay/<key>, Idempotency-Key from the pool
    mismatch = 1,   -- the same keys with another body: 422 (or first)
    noidem = 2,     -- POST without Idempotency-Key: 400
    badidem = 2,    -- POST with an invalid Idempotency-Key: 400
}

local custom = os.getenv("SOAK_MIX")
if custom and custom ~= "" then
    mix = {}
    for k, w in string.gmatch(custom, "(%a+)=(%d+)") do
        mix[k] = tonumber(w)
    end
end

local kinds = {}
local total_weight = 0
for k, w in pairs(mix) do
    if w > 0 then
        total_weight = total_weight + w
        kinds[#kinds + 1] = {k, total_weight}
    end
end
table.sort(kinds, function(a, b) return a[2] < b[2] end)

local body_ok = '{"amount":1000,"currency":"usd","soak":true}'
local body_other = '{"amount":9999,"currency":"usd","soak":"mismatch"}'

-- ---- main state: the threads, for done() -------------------------------

local threads = {}
local thread_no = 0

function setup(thread)
    thread_no = thread_no + 1
    thread:set("tid", thread_no)
    threads[#threads + 1] = thread
end

-- ---- per thread ----------------------------------------------------------

counts = {}      -- "kind status" -> n
codes = {}       -- "kind code" -> n  (non-2xx only; "-" if none found)
checks = {}      -- anomaly name -> n
replays = {}     -- kind -> n of Idempotent-Replayed: true
local counter = 0
local sampled = {}
local written = 0
local sample_file = nil

local function bump(t, k)
    t[k] = (t[k] or 0) + 1
end

function init(args)
    math.randomseed(os.time() * 1000 + (tid or 0) * 7919)
    local path = sample_dir .. "/wrk-" .. tostring(tid or 0) .. ".samples"
    sample_file = io.open(path, "wb")
end

if delay_ms > 0 then
    function delay()
        -- jittered around the mean so connections do not march in step
        return math.floor(delay_ms * (0.5 + math.random()))
    end
end

local function pick_kind()
    local r = math.random() * total_weight
    for i = 1, #kinds do
        if r < kinds[i][2] then
            return kinds[i][1]
        end
    end
    return kinds[#kinds][1]
end

local function pool_key()
    local w = math.floor((os.time() - t0) / window)
    local i
    if math.random() < hot_share then
        i = math.random(0, hot - 1)
    else
        i = math.random(0, pool - 1)
    end
    return "wk-" .. run .. "-" .. w .. "-" .. i
end

function request()
    counter = counter + 1
    local kind = pick_kind()
    local h = {["X-Request-Id"] = kind .. "-" .. tostring(tid or 0) .. "-"
                                  .. counter}
    local method, path, body = "GET", "/api/ok", nil

    if kind == "ok" then
        h["Authorization"] = "Bearer " .. key_ok
    elseif kind == "low" then
        h["Authorization"] = "Bearer " .. key_low
    elseif kind == "nokey" then
        -- nothing
    elseif kind == "badkey" then
        h["Authorization"] = "Bearer soak_unknown_key_"
                             .. string.format("%04d", math.random(0, 49))
    elseif kind == "malformed" then
        h["Authorization"] = "Bearer short"
    elseif kind == "revoked" then
        h["Authorization"] = "Bearer " .. key_revoked
    elseif kind == "disabled" then
        h["Authorization"] = "Bearer " .. key_disabled
    elseif kind == "noscope" then
        h["Authorization"] = "Bearer " .. key_ok
        path = "/admin/ok"
    elseif kind == "notfound" then
        path = "/nope/" .. counter
    else
        -- the POST kinds
        method = "POST"
        h["Authorization"] = "Bearer " .. key_ok
        h["Content-Type"] = "application/json"
        body = body_ok
        local k = pool_key()
        path = "/pay/" .. k .. "?sleep=" .. sleep_ms
        if kind == "post" then
            h["Idempotency-Key"] = k
        elseif kind == "mismatch" then
            h["Idempotency-Key"] = k
            body = body_other
        elseif kind == "noidem" then
            path = "/pay/noidem-" .. run .. "?sleep=0"
        elseif kind == "badidem" then
            h["Idempotency-Key"] = "has spaces " .. counter
            path = "/pay/badidem-" .. run .. "?sleep=0"
        end
    end
    return wrk.format(method, path, h, body)
end

local function header(headers, name)
    local v = headers[name]
    if v ~= nil then
        return v
    end
    local lname = string.lower(name)
    for k, val in pairs(headers) do
        if string.lower(k) == lname then
            return val
        end
    end
    return nil
end

local function write_sample(status, kind, rid, ctype, body, why)
    if sample_file == nil then
        return
    end
    rid = rid or ""
    ctype = ctype or ""
    body = body or ""
    sample_file:write(string.format("SAMPLE %d %s %s %d %d %d\n", status,
        kind, why, #rid, #ctype, #body))
    sample_file:write(rid, ctype, body, "\n")
    sample_file:flush()
    written = written + 1
end

function response(status, headers, body)
    local rid = header(headers, "X-Request-Id")
    local kind = "unknown"
    if rid ~= nil then
        kind = string.match(rid, "^(%a+)%-%d+%-%d+$") or "foreign"
    else
        bump(checks, "no_request_id")
    end
    bump(counts, kind .. " " .. status)

    if header(headers, "Idempotent-Replayed") == "true" then
        bump(replays, kind)
    end

    if status >= 200 and status < 300 then
        if (kind == "post" or kind == "mismatch")
           and not string.find(body, '"n":1,', 1, true) then
            -- the upstream's counter for this key is not 1: ran twice
            bump(checks, "post_2xx_n_not_1")
            write_sample(status, kind, rid, header(headers, "Content-Type"),
                         body, "n_not_1")
        end
        return
    end

    local code = string.match(body, '"code":"([^"\\]*)"') or "-"
    bump(codes, kind .. " " .. code)
    local why = nil
    if code == "-" then
        bump(checks, "non2xx_without_code")
        why = "no_code"
    end
    if rid == nil or not string.find(body, '"request_id":"' .. rid .. '"',
                                     1, true) then
        bump(checks, "non2xx_request_id_mismatch")
        why = why or "rid_mismatch"
    end

    local sk = kind .. " " .. status
    local n = (sampled[sk] or 0) + 1
    sampled[sk] = n
    if why ~= nil then
        if written < sample_cap + 1000 then
            write_sample(status, kind, rid, header(headers, "Content-Type"),
                         body, why)
        end
    elseif written < sample_cap
           and (n <= sample_first or math.random(sample_every) == 1) then
        write_sample(status, kind, rid, header(headers, "Content-Type"),
                     body, "sample")
    end
end

-- ---- main state: the report ---------------------------------------------

local function json_table(t)
    local parts = {}
    local keys = {}
    for k in pairs(t) do
        keys[#keys + 1] = k
    end
    table.sort(keys)
    for _, k in ipairs(keys) do
        parts[#parts + 1] = string.format('"%s":%d', k, t[k])
    end
    return "{" .. table.concat(parts, ",") .. "}"
end

local function merge(into, t)
    if type(t) ~= "table" then
        return
    end
    for k, v in pairs(t) do
        into[k] = (into[k] or 0) + v
    end
end

function done(summary, latency, requests)
    local all = {counts = {}, codes = {}, checks = {}, replays = {}}
    for _, t in ipairs(threads) do
        merge(all.counts, t:get("counts"))
        merge(all.codes, t:get("codes"))
        merge(all.checks, t:get("checks"))
        merge(all.replays, t:get("replays"))
    end
    local e = summary.errors
    io.write(string.format(
        'SOAK_JSON {"requests":%d,"duration_us":%d,"bytes":%d,' ..
        '"err_connect":%d,"err_read":%d,"err_write":%d,"err_status":%d,' ..
        '"err_timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d,' ..
        '"counts":%s,"codes":%s,"checks":%s,"replays":%s}\n',
        summary.requests, summary.duration, summary.bytes,
        e.connect, e.read, e.write, e.status, e.timeout,
        latency:percentile(50), latency:percentile(99), latency.max,
        json_table(all.counts), json_table(all.codes),
        json_table(all.checks), json_table(all.replays)))
    io.flush()
end
