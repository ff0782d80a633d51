-- queue_defer: a message is over its consumer's rate limit: move it from
-- the stream back into the delayed set, due after `delay`, without counting
-- an attempt. Atomic, like a retry: the message is in exactly one of the
-- two at every moment, and it is not recorded as processed.
--
-- KEYS[1]  the stream
-- KEYS[2]  the delayed sorted set
-- ARGV[1]  the consumer group
-- ARGV[2]  the stream entry id
-- ARGV[3]  delay before it is visible again, in ms
-- ARGV[4]  the message's current attempt (counting deliveries lost to
--          crashes); kept as is, not incremented
--
-- Reply: "deferred", or "gone" (it was not pending for the group any more:
-- another consumer reclaimed it; nothing changed).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 or #entry == 0 then
  return 'gone'
end
redis.call('XDEL', KEYS[1], ARGV[2])
local f = {}
local fields = entry[1][2]
for i = 1, #fields, 2 do
  f[fields[i]] = fields[i + 1]
end
local attempt = math.max(tonumber(f.attempt) or 1, tonumber(ARGV[4]) or 1)
local member = cmsgpack.pack({f.id, f.payload, f.headers, attempt, f.max, tonumber(f.enq), f.error or ''})
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), member)
return 'deferred'
