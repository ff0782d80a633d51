-- limiter_token_bucket: one check of a token-bucket policy.
--
-- KEYS[1]  the state: a hash {tokens, ts, capacity}: tokens in the bucket
--          (fractional) as of ts (microseconds of Redis time), and the
--          capacity they were counted against, with a TTL until the bucket
--          is full again; absent = full
-- KEYS[2]  the key's override: a hash {algorithm, limit, period-us, burst};
--          used only when algorithm is "tb"
-- ARGV[1]  cost: tokens to take (0 = peek: take nothing)
-- ARGV[2]  refill count: tokens added per refill period
-- ARGV[3]  refill period in microseconds
-- ARGV[4]  capacity (>= 1)
--
-- The bucket refills continuously: (elapsed us) * count / period tokens,
-- fractions included, up to the capacity. A check of cost c is allowed when
-- the bucket holds at least c tokens. A peek reports whether a check of
-- cost 1 would be allowed. Time is Redis TIME. When the capacity changes (an
-- override), the tokens move by the same amount, so the key keeps the units
-- it has used (a smaller capacity can leave the bucket in debt).
--
-- Reply: {0, allowed, limit, remaining, retry_after_ms, reset_after_ms}:
-- limit = capacity; remaining = whole tokens left after this check;
-- retry_after_ms = 0 when allowed, else when enough tokens will be there;
-- reset_after_ms = when the bucket will be full.
-- {1, 0, limit, 0, 0, 0} when cost is over the capacity (it never fits);
-- {2, 0, 0, 0, 0, 0} when the override is malformed.
if redis.replicate_commands then
  -- Redis < 5 needs this to write after TIME; later versions always do so.
  redis.replicate_commands()
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local cost = tonumber(ARGV[1])
local count, period, capacity = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local o = redis.call('HMGET', KEYS[2], 'algorithm', 'limit', 'period-us', 'burst')
if o[1] == 'tb' then
  count, period, capacity = tonumber(o[2]), tonumber(o[3]), tonumber(o[4])
  if not (count and period and capacity and count >= 1 and period >= 1 and capacity >= 1) then
    return {2, 0, 0, 0, 0, 0}
  end
end
if cost > capacity then
  return {1, 0, capacity, 0, 0, 0}
end
local rate = count / period
-- Slack for floating-point rounding, far below one token.
local eps = 1e-6
local s = redis.call('HMGET', KEYS[1], 'tokens', 'ts', 'capacity')
local tokens, ts, was = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
if not tokens or not ts then
  tokens, ts = capacity, now
elseif was then
  tokens = tokens + capacity - was
end
if now > ts then
  tokens = math.min(capacity, tokens + (now - ts) * rate)
  ts = now
end
local take = math.max(cost, 1)
local allowed = tokens + eps >= take
if allowed and cost > 0 then
  tokens = tokens - cost
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.17g', tokens), 'ts', string.format('%d', ts), 'capacity', capacity)
  redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate / 1000) + 1)
end
local retry = 0
if not allowed then
  retry = math.ceil((take - tokens) / rate / 1000)
end
local remaining = math.max(0, math.floor(tokens + eps))
return {0, allowed and 1 or 0, capacity, remaining, retry, math.ceil((capacity - tokens) / rate / 1000)}
