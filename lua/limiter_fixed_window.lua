-- limiter_fixed_window: one check of a fixed-window policy.
--
-- KEYS[1]  the state: a hash {start, count}: the current window's start in
--          microseconds of Redis time and the units admitted in it; TTL =
--          the end of that window
-- KEYS[2]  the key's override: a hash {algorithm, limit, period-us, burst};
--          used only when algorithm is "fw"
-- ARGV[1]  cost: units to take (0 = peek: take nothing)
-- ARGV[2]  limit: units per window (>= 1)
-- ARGV[3]  window in microseconds
--
-- Windows are aligned to multiples of the window length since the Unix
-- epoch (Redis TIME), the same for every key. A check of cost c is allowed
-- when the window's count plus c is at most the limit. The reply says
-- whether it was allowed separately from what remains, so "allowed, 0
-- remaining" is not mistaken for "denied". A burst at the end of one window
-- and another at the start of the next are both admitted: up to twice the
-- limit within one window's length.
--
-- Reply: {0, allowed, limit, remaining, retry_after_ms, reset_after_ms}:
-- remaining = units left in this window after this check; retry_after_ms =
-- 0 when allowed, else when the window ends; reset_after_ms = when the
-- window ends. {1, 0, limit, 0, 0, 0} when cost is over the limit;
-- {2, 0, 0, 0, 0, 0} when the override is malformed.
if redis.replicate_commands then
  -- Redis < 5 needs this to write after TIME; later versions always do so.
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local limit, window = tonumber(ARGV[2]), tonumber(ARGV[3])
local o = redis.call('HMGET', KEYS[2], 'algorithm', 'limit', 'period-us')
if o[1] == 'fw' then
  limit, window = tonumber(o[2]), tonumber(o[3])
  if not (limit and window and limit >= 1 and window >= 1) then
    return {2, 0, 0, 0, 0, 0}
  end
end
if cost > limit then
  return {1, 0, limit, 0, 0, 0}
end
local start = now - math.fmod(now, window)
local n = 0
local s = redis.call('HMGET', KEYS[1], 'start', 'count')
local stored = tonumber(s[1])
if stored and stored >= start then
  -- The current window (or a later one, if Redis time went backwards).
  start = stored
  now = math.max(now, start)
  n = tonumber(s[2]) or 0
end
local allowed = n + math.max(cost, 1) <= limit
local reset = math.max(1, math.ceil((start + window - now) / 1000))
if allowed and cost > 0 then
  n = n + cost
  redis.call('HSET', KEYS[1], 'start', string.format('%d', start), 'count', n)
  redis.call('PEXPIRE', KEYS[1], reset)
end
local retry = 0
if not allowed then
  retry = reset
end
return {0, allowed and 1 or 0, limit, math.max(0, limit - n), retry, reset}
