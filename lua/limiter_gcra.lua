-- limiter_gcra: one check of a GCRA policy (the semantics of redis-cell's
-- CL.THROTTLE, with `burst` = its max_burst + 1).
--
-- KEYS[1]  the state: a string "<TAT> <T>": the theoretical arrival time in
--          microseconds of Redis time and the emission interval T it was
--          computed with, with a TTL until the TAT; absent = idle
-- KEYS[2]  the key's override: a hash {algorithm, limit, period-us, burst};
--          used only when algorithm is "gcra"
-- ARGV[1]  cost: units to take (0 = peek: take nothing)
-- ARGV[2]  rate count: units per period
-- ARGV[3]  rate period in microseconds
-- ARGV[4]  burst: units allowed at once (>= 1)
--
-- Time is Redis TIME, so hosts with skewed clocks agree. The emission
-- interval is T = period / count; a check of cost c is allowed when the TAT
-- after it is at most burst * T ahead of now. A peek reports whether a check
-- of cost 1 would be allowed. When T changes (an override), the key's past
-- use is rescaled to the new T, so it keeps the units it has used.
--
-- Reply: {0, allowed, limit, remaining, retry_after_ms, reset_after_ms}:
-- allowed 1/0; limit = burst; remaining = units that could be taken at once
-- after this check; retry_after_ms = 0 when allowed, else when this cost
-- would be allowed; reset_after_ms = when the key is back to a full burst.
-- {1, 0, limit, 0, 0, 0} when cost is over the burst (it never fits);
-- {2, 0, 0, 0, 0, 0} when the override is malformed.
if redis.replicate_commands then
  -- Redis < 5 needs this to write after TIME; later versions always do so.
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local count, period, burst = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local o = redis.call('HMGET', KEYS[2], 'algorithm', 'limit', 'period-us', 'burst')
if o[1] == 'gcra' then
  count, period, burst = tonumber(o[2]), tonumber(o[3]), tonumber(o[4])
  if not (count and period and burst and count >= 1 and period >= 1 and burst >= 1) then
    return {2, 0, 0, 0, 0, 0}
  end
end
if cost > burst then
  return {1, 0, burst, 0, 0, 0}
end
local interval = period / count
local tolerance = interval * burst
-- Slack for floating-point rounding: at most 1 us, and far below T.
local eps = math.min(1, interval / 1000)
local tat = now
local stored = redis.call('GET', KEYS[1])
if stored then
  local t, i = string.match(stored, '^(%S+) (%S+)$')
  t, i = tonumber(t), tonumber(i)
  if t and i and i > 0 and t > now then
    tat = now + (t - now) * (interval / i)
  end
end
local new_tat = tat + interval * math.max(cost, 1)
local allowed = new_tat - now <= tolerance + eps
local ttl = tat - now
if allowed and cost > 0 then
  ttl = new_tat - now
  redis.call('SET', KEYS[1], string.format('%.17g %.17g', new_tat, interval), 'PX', math.max(1, math.ceil(ttl / 1000)))
end
local remaining = math.floor((tolerance - ttl + eps) / interval)
remaining = math.max(0, math.min(burst, remaining))
local retry = 0
if not allowed then
  retry = math.ceil((new_tat - tolerance - now) / 1000)
end
return {0, allowed and 1 or 0, burst, remaining, retry, math.ceil(ttl / 1000)}
