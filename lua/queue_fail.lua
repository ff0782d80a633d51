-- queue_fail: a delivery failed: schedule a retry after a backoff, or after
-- the last attempt move the message to the dead-letter stream. Atomic, so
-- the message is never both retried and dead, nor lost in between.
--
-- KEYS[1]  the stream
-- KEYS[2]  the delayed sorted set
-- KEYS[3]  the dead-letter stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the stream entry id
-- ARGV[3]  backoff before the retry, in ms
-- ARGV[4]  the error
-- ARGV[5]  the consumer's default max attempts
-- ARGV[6]  the attempt that failed (counting deliveries lost to crashes)
--
-- Reply: "retry", "dead", or "gone" (it was not pending for the group any
-- more: another consumer reclaimed it; nothing changed).
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
local attempt = math.max(tonumber(f.attempt) or 1, tonumber(ARGV[6]) or 1)
local max = tonumber(f.max) or 0
if max == 0 then
  max = tonumber(ARGV[5])
end
if attempt < max then
  local member = cmsgpack.pack({f.id, f.payload, f.headers, attempt + 1, f.max, tonumber(f.enq), ARGV[4]})
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), member)
  return 'retry'
end
redis.call('XADD', KEYS[3], '*', 'id', f.id, 'payload', f.payload, 'headers', f.headers,
  'attempts', attempt, 'max', f.max, 'enq', f.enq, 'error', ARGV[4],
  'failed', string.format('%.0f', now))
return 'dead'
