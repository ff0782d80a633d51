-- limiter_concurrency: acquire slots of a concurrency policy under a lease.
--
-- KEYS[1]  the held slots: a sorted set with one member "<lease>#<i>" per
--          held slot, scored by the lease's expiry in microseconds of Redis
--          time; TTL = the latest expiry
-- KEYS[2]  the key's override: a hash {algorithm, limit, period-us, burst};
--          used only when algorithm is "cc"
-- ARGV[1]  cost: slots to acquire (0 = peek: acquire nothing)
-- ARGV[2]  slots: how many may be held at once (>= 1)
-- ARGV[3]  lease in microseconds: a slot not released by then frees itself
-- ARGV[4]  the lease id (unique per acquisition; retrying with the same id
--          acquires the same members again instead of more)
--
-- Expired slots are dropped first, so a holder that died without releasing
-- frees its slots when its lease runs out. A check of cost c is allowed when
-- the held slots plus c are at most the limit. Release is `ZREM` of the
-- lease's members. Time is Redis TIME.
--
-- Reply: {0, allowed, limit, remaining, retry_after_ms, reset_after_ms}:
-- remaining = free slots after this check; retry_after_ms = 0 when allowed,
-- else when enough leases expire (a release can free slots sooner);
-- reset_after_ms = when the last held lease expires.
-- {1, 0, limit, 0, 0, 0} when cost is over the slots (it never fits);
-- {2, 0, 0, 0, 0, 0} when the override is malformed.
if redis.replicate_commands then
  -- Redis < 5 needs this to write after TIME; later versions always do so.
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local slots, lease = tonumber(ARGV[2]), tonumber(ARGV[3])
local o = redis.call('HMGET', KEYS[2], 'algorithm', 'limit', 'period-us')
if o[1] == 'cc' then
  slots, lease = tonumber(o[2]), tonumber(o[3])
  if not (slots and lease and slots >= 1 and lease >= 1) then
    return {2, 0, 0, 0, 0, 0}
  end
end
if cost > slots then
  return {1, 0, slots, 0, 0, 0}
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', string.format('%d', now))
local n = redis.call('ZCARD', KEYS[1])
local take = math.max(cost, 1)
local allowed = n + take <= slots
if allowed and cost > 0 then
  local expiry = string.format('%d', now + lease)
  local args = {}
  for i = 1, cost do
    args[#args + 1] = expiry
    args[#args + 1] = ARGV[4] .. '#' .. i
    if #args >= 1000 or i == cost then
      redis.call('ZADD', KEYS[1], unpack(args))
      args = {}
    end
  end
  local ms = math.ceil(lease / 1000)
  if redis.call('PTTL', KEYS[1]) < ms then
    redis.call('PEXPIRE', KEYS[1], ms)
  end
  n = redis.call('ZCARD', KEYS[1])
end
local retry = 0
if not allowed then
  -- The (n + take - slots)-th soonest expiry frees enough slots.
  local e = redis.call('ZRANGE', KEYS[1], n + take - slots - 1, n + take - slots - 1, 'WITHSCORES')
  retry = math.max(1, math.ceil((tonumber(e[2]) - now) / 1000))
end
local reset = 0
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
if last[2] then
  reset = math.ceil((tonumber(last[2]) - now) / 1000)
end
return {0, allowed and 1 or 0, slots, math.max(0, slots - n), retry, reset}
