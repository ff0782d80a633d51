-- queue_reclaim: take over messages whose delivery stalled (their consumer
-- died or hangs), with how often each has now been delivered. One script,
-- so a claimed message always comes back with its delivery count (a
-- separate XPENDING that failed would leave it claimed but not run).
--
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the consumer taking them over
-- ARGV[3]  how long a delivery must have been idle, in ms (the visibility
--          timeout)
-- ARGV[4]  most messages to take over in one call
--
-- Reply: a list of {entry id, fields (flat name/value list), deliveries},
-- deliveries counting this one. Entries deleted from the stream while
-- pending are dropped from the group by XAUTOCLAIM and not returned.
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], '0-0',
  'COUNT', ARGV[4])
local out = {}
for _, e in ipairs(r[2]) do
  -- Redis 6.2 lists a deleted entry as {id, nil}.
  if e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    local deliveries = 1
    if p[1] then
      deliveries = p[1][4]
    end
    out[#out + 1] = {e[1], e[2], deliveries}
  end
end
return out
