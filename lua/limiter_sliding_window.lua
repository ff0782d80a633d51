-- limiter_sliding_window: one check of a sliding-window policy, kept as a
-- log of admitted units (exact).
--
-- KEYS[1]  the log: a sorted set with one member per admitted unit, scored
--          by its admission time in microseconds of Redis time; TTL = window
-- KEYS[2]  the key's override: a hash {algorithm, limit, period-us, burst};
--          used only when algorithm is "sw"
-- ARGV[1]  cost: units to take (0 = peek: take nothing)
-- ARGV[2]  limit: units per window (>= 1)
-- ARGV[3]  window in microseconds
--
-- The window is (now - window, now]: a check of cost c is allowed when the
-- units admitted in it plus c are at most the limit, so no interval of one
-- window's length ever admits more than the limit. A peek reports whether
-- a check of cost 1 would be allowed. Time is Redis TIME, and never runs
-- backwards for one key (a later check uses at least the newest entry's time).
--
-- Reply: {0, allowed, limit, remaining, retry_after_ms, reset_after_ms}:
-- remaining = units still free in the window after this check;
-- retry_after_ms = 0 when allowed, else when enough old units leave the
-- window for this cost; reset_after_ms = when every logged unit has left.
-- {1, 0, limit, 0, 0, 0} when cost is over the limit (it never fits);
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
if o[1] == 'sw' then
  limit, window = tonumber(o[2]), tonumber(o[3])
  if not (limit and window and limit >= 1 and window >= 1) then
    return {2, 0, 0, 0, 0, 0}
  end
end
if cost > limit then
  return {1, 0, limit, 0, 0, 0}
end
local newest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if newest[2] and tonumber(newest[2]) > now then
  now = tonumber(newest[2])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now - window))
local n = redis.call('ZCARD', KEYS[1])
local take = math.max(cost, 1)
local allowed = n + take <= limit
if allowed and cost > 0 then
  -- Members "<time>-<i>": entries logged at `now` are numbered 1..k, so a
  -- new one never reuses a member.
  local same = redis.call('ZCOUNT', KEYS[1], string.format('%d', now), string.format('%d', now))
  local score = string.format('%d', now)
  local args = {}
  for i = 1, cost do
    args[#args + 1] = score
    args[#args + 1] = score .. '-' .. (same + i)
    if #args >= 1000 or i == cost then
      redis.call('ZADD', KEYS[1], unpack(args))
      args = {}
    end
  end
  redis.call('PEXPIRE', KEYS[1], math.ceil(window / 1000))
  n = n + cost
end
local retry = 0
if not allowed then
  -- The (n + take - limit)-th oldest unit must leave the window first.
  local e = redis.call('ZRANGE', KEYS[1], n + take - limit - 1, n + take - limit - 1, 'WITHSCORES')
  retry = math.max(1, math.ceil((tonumber(e[2]) + window - now) / 1000))
end
local reset = 0
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  reset = math.ceil((tonumber(last[2]) + window - now) / 1000)
end
return {0, allowed and 1 or 0, limit, math.max(0, limit - n), retry, reset}
