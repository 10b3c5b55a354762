-- wrk script of bench/bench.py, one file for every row; the mode comes from
-- the environment (read in every wrk Lua state, the main one included, so
-- wrk sees the same request() everywhere):
--
--   BENCH_MODE=get      the plain GET given on the command line (static)
--   BENCH_MODE=post     POST with a JSON body, no Idempotency-Key (static)
--   BENCH_MODE=fresh    POST, a new Idempotency-Key on every request
--                       (BENCH_RUN_ID makes keys unique across runs)
--   BENCH_MODE=replay   POST, always Idempotency-Key: BENCH_IDEM_KEY
--   BENCH_MODE=soak     the GET; each thread stops after BENCH_SOAK_REQUESTS
--                       responses and prints BENCH_SOAK_DONE
--
-- BENCH_PACE_MS=N: every connection waits N ms before each request (wrk's
-- delay(), not counted in the latency): the latency runs, at the same
-- request rate for every row, far below saturation.
--
-- Headers given with -H (Authorization) are kept.  done() prints one line
-- "BENCH_JSON {...}" with exact latency percentiles (microseconds), the
-- request count and the error counts, which bench.py parses.

local mode = os.getenv("BENCH_MODE") or "get"
local run_id = os.getenv("BENCH_RUN_ID") or tostring(os.time())
local body = '{"amount":1000,"currency":"usd","description":"bench"}'

local function post_headers()
    local h = {}
    for k, v in pairs(wrk.headers) do
        h[k] = v
    end
    h["Content-Type"] = "application/json"
    return h
end

if mode == "post" or mode == "replay" then
    wrk.method = "POST"
    wrk.body = body
    wrk.headers["Content-Type"] = "application/json"
    if mode == "replay" then
        wrk.headers["Idempotency-Key"] = os.getenv("BENCH_IDEM_KEY")
            or ("bench-replay-" .. run_id)
    end
end

local pace_ms = tonumber(os.getenv("BENCH_PACE_MS") or "")

if pace_ms and pace_ms > 0 then
    function delay()
        return pace_ms
    end
end

local thread_no = 0

function setup(thread)
    thread_no = thread_no + 1
    thread:set("tid", thread_no)
end

if mode == "fresh" then
    local counter = 0
    local headers
    local prefix

    function init(args)
        headers = post_headers()
        prefix = "bench-" .. run_id .. "-" .. tostring(tid or 0) .. "-"
    end

    function request()
        counter = counter + 1
        headers["Idempotency-Key"] = prefix .. counter
        return wrk.format("POST", nil, headers, body)
    end
end

if mode == "soak" then
    local quota = tonumber(os.getenv("BENCH_SOAK_REQUESTS") or "1000000")
    local seen = 0

    -- wrk's main thread sleeps out the whole -d duration whatever its
    -- threads do: the marker tells bench.py to end wrk with SIGINT, after
    -- which wrk prints its summary as usual.
    function response(status, headers, body)
        seen = seen + 1
        if seen == quota then
            io.write("BENCH_SOAK_DONE\n")
            io.flush()
            wrk.thread:stop()
        end
    end
end

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        'BENCH_JSON {"requests":%d,"duration_us":%d,' ..
        '"p50_us":%d,"p90_us":%d,"p99_us":%d,"p999_us":%d,' ..
        '"max_us":%d,"mean_us":%.1f,' ..
        '"err_connect":%d,"err_read":%d,"err_write":%d,' ..
        '"err_status":%d,"err_timeout":%d}\n',
        summary.requests, summary.duration,
        latency:percentile(50), latency:percentile(90),
        latency:percentile(99), latency:percentile(99.9),
        latency.max, latency.mean,
        e.connect, e.read, e.write, e.status, e.timeout))
end
