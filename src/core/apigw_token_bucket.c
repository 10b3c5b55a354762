/*
 * Token-bucket rate limiting without nginx (see apigw_token_bucket.h).
 */

#include <openssl/sha.h>

#include "apigw_token_bucket.h"


static size_t apigw_tb_int(unsigned char *p, int64_t v);


/*
 * The bucket script.
 *
 * Clock.  TIME is read in the script, never passed by a client, so nginx
 * nodes with skewed clocks share one exact bucket.  Redis < 5 refuses
 * writes after a non-deterministic command unless the script switched to
 * effects replication first; 5+ does that by default and 7.x keeps
 * replicate_commands() as a no-op, so it is called when it exists.
 *
 * Exact fractions.  Lua numbers are doubles, so the state must stay in
 * integers below 2^53.  A rate of R tokens per P ms refills R/P tokens per
 * ms: 0.003 for 3r/s, and not even a finite decimal for 7r/m.  The script
 * therefore counts in units of 1/U token with U = P / gcd(P, R): one ms
 * then adds exactly R / gcd(P, R) units, and every quantity (level,
 * refill, cost, times) is an integer, so no rounding error accumulates
 * however often the bucket is touched.  Milli-tokens are exact for Nr/s
 * only (7r/m refills 7/60 milli-token per ms), and a GCRA "theoretical
 * arrival time" needs the emission interval P/R ms, again a fraction.
 * apigw_tb_check() keeps capacity * U within 2^53.
 *
 * State.  Hash {u = level in units, t = ms of the level, p = U}.  A full
 * bucket is deleted, and an absent key reads as full, so idle clients cost
 * no memory; otherwise it expires (PEXPIREAT, on the TIME of the decision)
 * when the bucket would be full, the moment its state becomes equal to
 * absence.  p lets a reload with
 * another rate read old state: the level is kept in whole tokens.
 *
 * Batches.  One call carries the checks of several requests (every check
 * of one worker's event-loop pass for one key value, see
 * ngx_http_apigw_ratelimit_batch.c): Redis runs the script's fixed part
 * (the call, TIME, one HMGET and one HSET + PEXPIRE per bucket) once for
 * all of them instead of once each, which is most of its cost.  Checks are
 * decided in order against state kept in the script, exactly as if each
 * had been its own call at the same TIME; every check stays all or
 * nothing; state is read once and written once per bucket at the end.
 * Parameter sets (capacity, rate, cost) are sent once and named by index,
 * as most checks of a batch share them.  Arguments are all validated
 * before anything is written: a bad call changes nothing.
 *
 * Decisions.  All buckets of one check are refilled first; the request is
 * allowed only when each holds cost tokens, and only then are tokens
 * taken.  A refusal writes nothing: refill is linear from (u, t), so the
 * stored state already equals the refilled one, and a flood of refusals
 * costs reads only.  Exception: repaired state (another rate, a capacity
 * lowered, a timestamp ahead of TIME after a failover to a host whose clock
 * is behind) is written back.  A timestamp ahead of TIME counts as "no
 * time passed" and is moved to TIME; left in place, every refusal would
 * find no time passed again and the bucket would never refill.
 *
 * Numbers go to Redis through %d (exact below 2^63): the default number
 * conversion of redis.call may print large values in exponent form.
 */
const char apigw_token_bucket_lua[] =
"if redis.replicate_commands then redis.replicate_commands() end\n"
"local MAX = 9007199254740992\n"
"local fmod, floor, tonumber = math.fmod, math.floor, tonumber\n"
"local function int(s, lo, hi)\n"
"  local n = tonumber(s)\n"
"  if n == nil or n ~= floor(n) or n < lo or n > hi then\n"
"    return nil\n"
"  end\n"
"  return n\n"
"end\n"
"local function cdiv(a, b)\n"
"  local r = fmod(a, b)\n"
"  local q = (a - r) / b\n"
"  if r > 0 then q = q + 1 end\n"
"  return q\n"
"end\n"
"local function str(n)\n"
"  return string.format('%d', n)\n"
"end\n"
"local function fail(why)\n"
"  return redis.error_reply('ERR apigw token bucket: ' .. why)\n"
"end\n"
"local m, na = #KEYS, #ARGV\n"
"local s = int(ARGV[1], 1, na)\n"
"if m == 0 or s == nil then\n"
"  return fail('want: sets, capacity tokens period_ms cost per set, '\n"
"    .. 'checks, and per check: items, key set per item')\n"
"end\n"
"local SK, SU, SR, SF, SC = {}, {}, {}, {}, {}\n"
"for j = 1, s do\n"
"  local b = 4 * j - 2\n"
"  local cap = int(ARGV[b], 1, MAX)\n"
"  local tok = int(ARGV[b + 1], 1, MAX)\n"
"  local per = int(ARGV[b + 2], 1, MAX)\n"
"  local cost = int(ARGV[b + 3], 1, cap or 0)\n"
"  if not (cap and tok and per and cost) then\n"
"    return fail('bad arguments for set ' .. j)\n"
"  end\n"
"  local g, r = per, tok\n"
"  while r > 0 do g, r = r, fmod(g, r) end\n"
"  local unit = per / g\n"
"  if cap * unit > MAX then\n"
"    return fail('capacity too large for this rate, set ' .. j)\n"
"  end\n"
"  SK[j], SU[j], SR[j], SF[j], SC[j] = cap, unit, tok / g, cap * unit,\n"
"    cost * unit\n"
"end\n"
"local a = 4 * s + 2\n"
"local c = int(ARGV[a], 1, na)\n"
"if c == nil then\n"
"  return fail('bad check count')\n"
"end\n"
"a = a + 1\n"
"local time = redis.call('TIME')\n"
"local now = tonumber(time[1]) * 1000 + floor(tonumber(time[2]) / 1000)\n"
"local st, wr = {}, {}\n"
"local IK, IS, IU, ID = {}, {}, {}, {}\n"
"local out, o = { now }, 1\n"
"for ci = 1, c do\n"
"  local n = int(ARGV[a], 1, m)\n"
"  if n == nil then\n"
"    return fail('bad item count, check ' .. ci)\n"
"  end\n"
"  a = a + 1\n"
"  local all = true\n"
"  for i = 1, n do\n"
"    local k, j = int(ARGV[a], 1, m), int(ARGV[a + 1], 1, s)\n"
"    if not (k and j) then\n"
"      return fail('bad key or set, check ' .. ci .. ' item ' .. i)\n"
"    end\n"
"    a = a + 2\n"
"    local unit, full = SU[j], SF[j]\n"
"    local u, dirty = full, false\n"
"    local x = st[k]\n"
"    if x == nil then\n"
"      x = false\n"
"      local h = redis.call('HMGET', KEYS[k], 'u', 't', 'p')\n"
"      if h[1] or h[2] or h[3] then\n"
"        local hu, ht, hp = tonumber(h[1]), tonumber(h[2]), tonumber(h[3])\n"
"        if hu and ht and hp and hu >= 0 and hp >= 1 then\n"
"          x = { hu, ht, hp }\n"
"        else\n"
"          x = 0\n"
"        end\n"
"      end\n"
"      st[k] = x\n"
"    end\n"
"    if x == 0 then\n"
"      dirty = true\n"
"    elseif x then\n"
"      local xu, t, p = x[1], x[2], x[3]\n"
"      if p ~= unit then\n"
"        xu = (xu - fmod(xu, p)) / p * unit\n"
"        dirty = true\n"
"      end\n"
"      if xu > full then\n"
"        xu = full\n"
"        dirty = true\n"
"      end\n"
"      if t > now then\n"
"        t = now\n"
"        dirty = true\n"
"      end\n"
"      if xu < full and now - t < cdiv(full - xu, SR[j]) then\n"
"        u = xu + (now - t) * SR[j]\n"
"      end\n"
"    end\n"
"    if u < SC[j] then all = false end\n"
"    IK[i], IS[i], IU[i], ID[i] = k, j, u, dirty\n"
"  end\n"
"  for i = 1, n do\n"
"    local k, j, u = IK[i], IS[i], IU[i]\n"
"    local unit, rate, full, cost = SU[j], SR[j], SF[j], SC[j]\n"
"    local retry = 0\n"
"    if u < cost then retry = cdiv(cost - u, rate) end\n"
"    if all then u = u - cost end\n"
"    local reset = cdiv(full - u, rate)\n"
"    if all or ID[i] then\n"
"      if u >= full then\n"
"        st[k] = false\n"
"        wr[k] = -1\n"
"      else\n"
"        st[k] = { u, now, unit }\n"
"        wr[k] = reset\n"
"      end\n"
"    end\n"
"    out[o + 1] = (u - fmod(u, unit)) / unit\n"
"    out[o + 2] = reset\n"
"    out[o + 3] = retry\n"
"    o = o + 3\n"
"  end\n"
"end\n"
"if a ~= na + 1 then\n"
"  return fail('arguments left over')\n"
"end\n"
"for k = 1, m do\n"
"  local reset = wr[k]\n"
"  if reset then\n"
"    if reset < 0 then\n"
"      redis.call('DEL', KEYS[k])\n"
"    else\n"
"      local x = st[k]\n"
"      redis.call('HSET', KEYS[k], 'u', str(x[1]), 't', str(x[2]),\n"
"        'p', str(x[3]))\n"
"      redis.call('PEXPIREAT', KEYS[k], str(x[2] + reset))\n"
"    end\n"
"  end\n"
"end\n"
"return out\n";


static const char  apigw_tb_err_count[] =
    "the number of requests must be a whole number from 1 to 1000000000";


static const char *
apigw_tb_parse_count(const unsigned char **pp, const unsigned char *end,
    uint64_t *out)
{
    uint64_t              n;
    const unsigned char  *p;

    p = *pp;
    n = 0;

    if (p == end || *p < '0' || *p > '9') {
        return apigw_tb_err_count;
    }

    /* the cap check before each step keeps n far from uint64 overflow */
    while (p < end && *p >= '0' && *p <= '9') {
        n = n * 10 + (uint64_t) (*p++ - '0');

        if (n > APIGW_TB_MAX_TOKENS) {
            return apigw_tb_err_count;
        }
    }

    if (n == 0) {
        return apigw_tb_err_count;
    }

    *pp = p;
    *out = n;

    return NULL;
}


const char *
apigw_rate_parse(const unsigned char *p, size_t len, apigw_rate_t *rate)
{
    uint64_t              n, period;
    const char           *err;
    const unsigned char  *end;

    if (p == NULL || len == 0) {
        return "empty rate; expected Nr/s, Nr/m, Nr/h or Nr/d";
    }

    end = p + len;

    err = apigw_tb_parse_count(&p, end, &n);
    if (err != NULL) {
        return err;
    }

    if (end - p != 3 || p[0] != 'r' || p[1] != '/') {
        return "rate must be a number of requests followed by "
               "r/s, r/m, r/h or r/d (e.g. 10r/s)";
    }

    switch (p[2]) {
    case 's':
        period = 1000;
        break;
    case 'm':
        period = 60 * 1000;
        break;
    case 'h':
        period = 60 * 60 * 1000;
        break;
    case 'd':
        period = 24 * 60 * 60 * 1000;
        break;
    default:
        return "rate period must be s, m, h or d (e.g. 10r/s)";
    }

    rate->tokens = n;
    rate->period_ms = period;

    return NULL;
}


const char *
apigw_burst_parse(const unsigned char *p, size_t len, uint64_t *burst)
{
    uint64_t              n;
    const unsigned char  *end;

    if (p == NULL || len == 0) {
        return "empty burst; expected a whole number from 1 to 1000000000";
    }

    end = p + len;

    if (apigw_tb_parse_count(&p, end, &n) != NULL || p != end) {
        return "burst must be a whole number from 1 to 1000000000";
    }

    *burst = n;

    return NULL;
}


static uint64_t
apigw_tb_gcd(uint64_t a, uint64_t b)
{
    uint64_t  r;

    while (b != 0) {
        r = a % b;
        a = b;
        b = r;
    }

    return a;
}


const char *
apigw_tb_check(uint64_t capacity, const apigw_rate_t *rate)
{
    uint64_t  unit;

    if (capacity == 0 || capacity > APIGW_TB_MAX_TOKENS
        || rate->tokens == 0 || rate->tokens > APIGW_TB_MAX_TOKENS
        || rate->period_ms == 0 || rate->period_ms > APIGW_TB_MAX_UNITS)
    {
        return "burst and rate must be from 1 to 1000000000";
    }

    /* the same units as the script: 1/unit token, unit ms per ... */
    unit = rate->period_ms / apigw_tb_gcd(rate->period_ms, rate->tokens);

    if (unit > APIGW_TB_MAX_UNITS / capacity) {
        return "burst is too large for this rate: the script counts "
               "exactly only while burst * (period in ms / gcd(period in "
               "ms, N)) stays under 2^53; lower burst or use a shorter "
               "period";
    }

    return NULL;
}


static int
apigw_tb_name_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
           || (c >= '0' && c <= '9') || c == '_' || c == '.' || c == '-';
}


int
apigw_tb_name_valid(const unsigned char *p, size_t len)
{
    size_t  i;

    if (len == 0 || len > APIGW_TB_NAME_MAX) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (!apigw_tb_name_char(p[i])) {
            return 0;
        }
    }

    return 1;
}


size_t
apigw_tb_key(unsigned char *buf, size_t len, const apigw_str_t *prefix,
    const apigw_str_t *policy, const apigw_str_t *key)
{
    size_t          n, i;
    unsigned char  *p;
    unsigned char   md[SHA256_DIGEST_LENGTH];
    static const unsigned char  hex[] = "0123456789abcdef";

    if (key->len == 0
        || (prefix->len && memchr(prefix->data, '{', prefix->len) != NULL)
        || (policy->len && memchr(policy->data, '}', policy->len) != NULL))
    {
        return 0;
    }

    if (key->len > APIGW_TB_KEY_MAX) {
        n = prefix->len + sizeof("{rlh:}:") - 1 + 2 * SHA256_DIGEST_LENGTH
            + policy->len;

    } else {
        n = prefix->len + sizeof("{rl:}:") - 1 + key->len + policy->len;
    }

    if (buf == NULL || len < n) {
        return n;
    }

    p = buf;

    if (prefix->len) {
        memcpy(p, prefix->data, prefix->len);
        p += prefix->len;
    }

    if (key->len > APIGW_TB_KEY_MAX) {
        SHA256(key->data, key->len, md);

        memcpy(p, "{rlh:", 5);
        p += 5;

        for (i = 0; i < SHA256_DIGEST_LENGTH; i++) {
            *p++ = hex[md[i] >> 4];
            *p++ = hex[md[i] & 0xf];
        }

    } else {
        memcpy(p, "{rl:", 4);
        p += 4;
        memcpy(p, key->data, key->len);
        p += key->len;
    }

    *p++ = '}';
    *p++ = ':';

    if (policy->len) {
        memcpy(p, policy->data, policy->len);
    }

    return n;
}


size_t
apigw_tb_key_slot_len(const unsigned char *key, size_t len)
{
    /* the policy holds no '}', so the last one closes the hash tag */
    while (len > 0 && key[len - 1] != '}') {
        len--;
    }

    return len;
}


void
apigw_tb_batch_init(apigw_tb_batch_t *b)
{
    b->nkeys = 0;
    b->nsets = 0;
    b->nchecks = 0;
    b->nitems = 0;
}


int
apigw_tb_batch_add(apigw_tb_batch_t *b, const apigw_tb_item_t *items,
    size_t n)
{
    size_t                 i, k, j, nkeys, nsets;
    const apigw_tb_item_t  *it;

    if (n == 0 || b->nchecks == APIGW_TB_BATCH_CHECKS
        || n > APIGW_TB_BATCH_ITEMS - b->nitems)
    {
        return -1;
    }

    /*
     * Keys and sets are only committed once the whole check fits, so a
     * refused check leaves the batch as it was.
     */

    nkeys = b->nkeys;
    nsets = b->nsets;

    for (i = 0; i < n; i++) {
        it = &items[i];

        if (it->bucket_len == 0 || it->cost == 0 || it->cost > it->capacity
            || apigw_tb_check(it->capacity, &it->rate) != NULL)
        {
            b->nkeys = nkeys;
            b->nsets = nsets;
            return -1;
        }

        for (k = 0; k < b->nkeys; k++) {
            if (b->key_len[k] == it->bucket_len
                && memcmp(b->key[k], it->bucket, it->bucket_len) == 0)
            {
                break;
            }
        }

        if (k == b->nkeys) {
            b->key[k] = it->bucket;
            b->key_len[k] = it->bucket_len;
            b->nkeys++;

        } else {
            /* one bucket twice in a check would be charged once */
            for (j = 0; j < i; j++) {
                if (b->item_key[b->nitems + j] == k) {
                    b->nkeys = nkeys;
                    b->nsets = nsets;
                    return -1;
                }
            }
        }

        for (j = 0; j < b->nsets; j++) {
            if (b->set[j].capacity == it->capacity
                && b->set[j].rate.tokens == it->rate.tokens
                && b->set[j].rate.period_ms == it->rate.period_ms
                && b->set[j].cost == it->cost)
            {
                break;
            }
        }

        if (j == b->nsets) {
            b->set[j].capacity = it->capacity;
            b->set[j].rate = it->rate;
            b->set[j].cost = it->cost;
            b->nsets++;
        }

        b->item_key[b->nitems + i] = (uint16_t) k;
        b->item_set[b->nitems + i] = (uint16_t) j;
    }

    b->check_items[b->nchecks++] = (uint16_t) n;
    b->nitems += n;

    return 0;
}


/* appends v as a decimal argument */
static void
apigw_tb_arg_int(const char **argv, size_t *argvlen, size_t *a,
    unsigned char **num, uint64_t v)
{
    size_t  n;

    n = apigw_tb_int(*num, (int64_t) v);

    argv[*a] = (const char *) *num;
    argvlen[*a] = n;
    (*a)++;
    *num += n;
}


size_t
apigw_tb_batch_argv(const apigw_tb_batch_t *b, const char **argv,
    size_t *argvlen, unsigned char *num)
{
    size_t  a, i, j, c, item;

    a = 0;

    for (i = 0; i < b->nkeys; i++) {
        argv[a] = (const char *) b->key[i];
        argvlen[a] = b->key_len[i];
        a++;
    }

    apigw_tb_arg_int(argv, argvlen, &a, &num, b->nsets);

    for (j = 0; j < b->nsets; j++) {
        apigw_tb_arg_int(argv, argvlen, &a, &num, b->set[j].capacity);
        apigw_tb_arg_int(argv, argvlen, &a, &num, b->set[j].rate.tokens);
        apigw_tb_arg_int(argv, argvlen, &a, &num, b->set[j].rate.period_ms);
        apigw_tb_arg_int(argv, argvlen, &a, &num, b->set[j].cost);
    }

    apigw_tb_arg_int(argv, argvlen, &a, &num, b->nchecks);

    item = 0;

    for (c = 0; c < b->nchecks; c++) {
        apigw_tb_arg_int(argv, argvlen, &a, &num, b->check_items[c]);

        for (i = 0; i < b->check_items[c]; i++, item++) {
            /* the script counts from 1 */
            apigw_tb_arg_int(argv, argvlen, &a, &num,
                             (uint64_t) b->item_key[item] + 1);
            apigw_tb_arg_int(argv, argvlen, &a, &num,
                             (uint64_t) b->item_set[item] + 1);
        }
    }

    return a;
}


int
apigw_tb_reply_now(const long long *v, size_t nv, size_t nitems,
    int64_t *now_ms)
{
    if (nitems == 0 || nitems > APIGW_TB_BATCH_ITEMS
        || nv != APIGW_TB_REPLY_LEN(nitems)
        || v[0] <= 0 || (unsigned long long) v[0] > APIGW_TB_MAX_UNITS)
    {
        return -1;
    }

    *now_ms = v[0];

    return 0;
}


int
apigw_tb_decode_item(apigw_tb_result_t *out, uint64_t capacity,
    int64_t now_ms, const long long *v)
{
    /*
     * What the script can answer to arguments apigw_tb_check() accepted;
     * anything else is a broken reply and must not reach the header math
     * (whose 64-bit products rely on these bounds).
     */
    if (capacity < 1 || capacity > APIGW_TB_MAX_TOKENS
        || v[0] < 0 || (unsigned long long) v[0] > capacity
        || v[1] < 0 || (unsigned long long) v[1] > APIGW_TB_MAX_UNITS
        || v[2] < 0 || (unsigned long long) v[2] > APIGW_TB_MAX_UNITS)
    {
        return -1;
    }

    out->allowed = (v[2] == 0);
    out->remaining = v[0];
    out->limit = (int64_t) capacity;
    out->reset_ms = v[1];
    out->retry_after_ms = v[2];
    out->now_ms = now_ms;

    return 0;
}


int
apigw_tb_all_allowed(const apigw_tb_result_t *res, size_t n)
{
    size_t  i;

    for (i = 0; i < n; i++) {
        if (!res[i].allowed) {
            return 0;
        }
    }

    return 1;
}


/* -1, 0, 1 as a is closer to empty than, as close as, or less than b */
static int
apigw_tb_closer(const apigw_tb_result_t *a, const apigw_tb_result_t *b)
{
    uint64_t  x, y;

    if (a->allowed != b->allowed) {
        return a->allowed ? 1 : -1;
    }

    if (!a->allowed && a->retry_after_ms != b->retry_after_ms) {
        return a->retry_after_ms > b->retry_after_ms ? -1 : 1;
    }

    /*
     * remaining / limit compared without division: decode keeps both under
     * APIGW_TB_MAX_TOKENS, so the products fit in 64 bits
     */
    x = (uint64_t) a->remaining * (uint64_t) b->limit;
    y = (uint64_t) b->remaining * (uint64_t) a->limit;

    if (x != y) {
        return x < y ? -1 : 1;
    }

    if (a->remaining != b->remaining) {
        return a->remaining < b->remaining ? -1 : 1;
    }

    return 0;
}


size_t
apigw_tb_tightest(const apigw_tb_result_t *res, size_t n)
{
    size_t  i, best;

    if (n == 0) {
        return 0;
    }

    best = 0;

    for (i = 1; i < n; i++) {
        if (apigw_tb_closer(&res[i], &res[best]) < 0) {
            best = i;
        }
    }

    return best;
}


static int64_t
apigw_tb_ceil_s(int64_t ms)
{
    return ms <= 0 ? 0 : (ms + 999) / 1000;
}


int64_t
apigw_tb_reset_epoch(const apigw_tb_result_t *r)
{
    return apigw_tb_ceil_s(r->now_ms + r->reset_ms);
}


int64_t
apigw_tb_reset_s(const apigw_tb_result_t *r)
{
    return apigw_tb_ceil_s(r->reset_ms);
}


int64_t
apigw_tb_retry_after_s(const apigw_tb_result_t *r)
{
    int64_t  s;

    if (r->allowed) {
        return 0;
    }

    /* "Retry-After: 0" to a refused client invites an instant retry */
    s = apigw_tb_ceil_s(r->retry_after_ms);

    return s < 1 ? 1 : s;
}


int64_t
apigw_tb_window_s(uint64_t capacity, const apigw_rate_t *rate)
{
    uint64_t  ms;
    int64_t   s;

    if (rate->tokens == 0) {
        return 0;
    }

    /* the time an empty bucket takes to fill: capacity * period / tokens */
    if (rate->period_ms != 0
        && capacity > (UINT64_MAX - rate->tokens) / rate->period_ms)
    {
        return INT64_MAX / 1000;
    }

    ms = (capacity * rate->period_ms + rate->tokens - 1) / rate->tokens;

    if (ms > (uint64_t) INT64_MAX - 999) {
        return INT64_MAX / 1000;
    }

    s = apigw_tb_ceil_s((int64_t) ms);

    return s < 1 ? 1 : s;
}


/* decimal digits of v into p (when not NULL); returns their count */
static size_t
apigw_tb_int(unsigned char *p, int64_t v)
{
    size_t          n, i;
    uint64_t        u;
    unsigned char   tmp[APIGW_TB_INT_LEN];

    n = 0;

    if (v < 0) {
        if (p) {
            p[n] = '-';
        }
        n++;
        u = (uint64_t) 0 - (uint64_t) v;

    } else {
        u = (uint64_t) v;
    }

    i = 0;

    do {
        tmp[i++] = (unsigned char) ('0' + u % 10);
        u /= 10;
    } while (u != 0);

    if (p) {
        while (i) {
            p[n++] = tmp[--i];
        }

    } else {
        n += i;
    }

    return n;
}


static size_t
apigw_tb_put_int(unsigned char *buf, size_t len, int64_t v)
{
    size_t  n;

    n = apigw_tb_int(NULL, v);

    if (buf != NULL && len >= n) {
        apigw_tb_int(buf, v);
    }

    return n;
}


size_t
apigw_tb_hdr_limit(unsigned char *buf, size_t len,
    const apigw_tb_result_t *r)
{
    return apigw_tb_put_int(buf, len, r->limit);
}


size_t
apigw_tb_hdr_remaining(unsigned char *buf, size_t len,
    const apigw_tb_result_t *r)
{
    return apigw_tb_put_int(buf, len, r->remaining);
}


size_t
apigw_tb_hdr_reset(unsigned char *buf, size_t len,
    const apigw_tb_result_t *r)
{
    return apigw_tb_put_int(buf, len, apigw_tb_reset_epoch(r));
}


size_t
apigw_tb_hdr_retry_after(unsigned char *buf, size_t len,
    const apigw_tb_result_t *r)
{
    if (r->allowed) {
        return 0;
    }

    return apigw_tb_put_int(buf, len, apigw_tb_retry_after_s(r));
}


/*
 * "name";k1=v1;k2=v2 as a structured-field item (RFC 8941): the name is an
 * sf-string, which allows only printable ASCII with " and \ escaped; other
 * bytes become '?' so the field always parses (names are checked at
 * configuration, this only keeps a bad one from breaking clients).
 */
static size_t
apigw_tb_sf_item(unsigned char *buf, size_t len, const apigw_str_t *name,
    const char *k1, int64_t v1, const char *k2, int64_t v2)
{
    size_t          n, i;
    unsigned char  *p, c;

    n = 2 + 2 * 3 + apigw_tb_int(NULL, v1) + apigw_tb_int(NULL, v2);

    for (i = 0; i < name->len; i++) {
        c = name->data[i];
        n += (c == '"' || c == '\\') ? 2 : 1;
    }

    if (buf == NULL || len < n) {
        return n;
    }

    p = buf;
    *p++ = '"';

    for (i = 0; i < name->len; i++) {
        c = name->data[i];

        if (c == '"' || c == '\\') {
            *p++ = '\\';
            *p++ = c;

        } else {
            *p++ = (c >= 0x20 && c < 0x7f) ? c : '?';
        }
    }

    *p++ = '"';
    *p++ = ';';
    *p++ = (unsigned char) k1[0];
    *p++ = '=';
    p += apigw_tb_int(p, v1);
    *p++ = ';';
    *p++ = (unsigned char) k2[0];
    *p++ = '=';
    apigw_tb_int(p, v2);

    return n;
}


size_t
apigw_tb_hdr_policy(unsigned char *buf, size_t len, const apigw_str_t *name,
    uint64_t capacity, const apigw_rate_t *rate)
{
    return apigw_tb_sf_item(buf, len, name, "q",
                            capacity > INT64_MAX ? INT64_MAX
                                                 : (int64_t) capacity,
                            "w", apigw_tb_window_s(capacity, rate));
}


size_t
apigw_tb_hdr_ratelimit(unsigned char *buf, size_t len,
    const apigw_str_t *name, const apigw_tb_result_t *r)
{
    return apigw_tb_sf_item(buf, len, name, "r", r->remaining,
                            "t", apigw_tb_reset_s(r));
}


int64_t
apigw_tb_deny_until(const apigw_tb_result_t *r, int64_t sent_ms,
    int64_t max_ms)
{
    int64_t  ms;

    if (r->allowed || r->retry_after_ms <= 0) {
        return 0;
    }

    ms = r->retry_after_ms;

    if (max_ms > 0 && ms > max_ms) {
        ms = max_ms;
    }

    return sent_ms + ms;
}


int
apigw_tb_deny_local(const apigw_tb_result_t *cached, int64_t sent_ms,
    int64_t until, int64_t now_local, apigw_tb_result_t *out)
{
    int64_t  elapsed;

    if (cached->allowed || now_local >= until) {
        return 0;
    }

    elapsed = now_local - sent_ms;

    if (elapsed < 0) {
        elapsed = 0;
    }

    *out = *cached;
    out->now_ms += elapsed;

    out->retry_after_ms -= elapsed;
    if (out->retry_after_ms < 1) {
        out->retry_after_ms = 1;
    }

    out->reset_ms -= elapsed;
    if (out->reset_ms < out->retry_after_ms) {
        out->reset_ms = out->retry_after_ms;
    }

    return 1;
}
