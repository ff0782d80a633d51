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
-- Everything that could fail is read and checked before the first write:
-- an error leaves the message pending as it was, never half moved.
--
-- Reply: "deferred", or "gone" (it was not pending for the group any more:
-- another consumer reclaimed it; nothing changed).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local delay = tonumber(ARGV[3])
if not delay then
  return redis.error_reply('queue_defer: the delay must be a number')
end
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #entry == 0 or #pending == 0 then
  if #pending > 0 then
    -- Pending but no longer in the stream: nothing left to defer.
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  end
  return 'gone'
end
local f = {}
local fields = entry[1][2]
for i = 1, #fields, 2 do
  f[fields[i]] = fields[i + 1]
end
local attempt = math.max(tonumber(f.attempt) or 1, tonumber(ARGV[4]) or 1)
local member = cmsgpack.pack({f.id or '', f.payload or '', f.headers or '{}', attempt,
  f.max or '0', tonumber(f.enq) or now, f.error or ''})
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + delay, member)
return 'deferred'
