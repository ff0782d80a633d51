-- queue_fail: a delivery failed: schedule a retry after a backoff, or after
-- the last attempt move the message to the dead-letter stream. Atomic, so
-- the message is never both retried and dead, nor lost in between.
--
-- The consumer calls it when a handler failed, and also, without running
-- the handler, for a reclaimed message whose consumer died or stalled
-- during its last allowed attempt (ARGV[6] is then that lost attempt).
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
-- Everything that could fail (the arguments, the entry's fields) is read
-- and checked before the first write: an error leaves the message pending
-- as it was, to be reclaimed, never half moved.
--
-- Reply: "retry", "dead", or "gone" (it was not pending for the group any
-- more: another consumer reclaimed it; nothing changed).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local backoff = tonumber(ARGV[3])
local default_max = tonumber(ARGV[5])
if not (backoff and default_max) then
  return redis.error_reply('queue_fail: backoff and max attempts must be numbers')
end
local entry = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #entry == 0 or #pending == 0 then
  if #pending > 0 then
    -- Pending but no longer in the stream: nothing left to retry.
    redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
  end
  return 'gone'
end
local f = {}
local fields = entry[1][2]
for i = 1, #fields, 2 do
  f[fields[i]] = fields[i + 1]
end
local attempt = math.max(tonumber(f.attempt) or 1, tonumber(ARGV[6]) or 1)
local max = tonumber(f.max) or 0
if max == 0 then
  max = default_max
end
local id, payload, headers = f.id or '', f.payload or '', f.headers or '{}'
local stored_max, enq = f.max or '0', tonumber(f.enq) or now
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if attempt < max then
  local member = cmsgpack.pack({id, payload, headers, attempt + 1, stored_max, enq, ARGV[4]})
  redis.call('ZADD', KEYS[2], now + backoff, member)
  return 'retry'
end
redis.call('XADD', KEYS[3], '*', 'id', id, 'payload', payload, 'headers', headers,
  'attempts', attempt, 'max', stored_max, 'enq', string.format('%.0f', enq), 'error', ARGV[4],
  'failed', string.format('%.0f', now))
return 'dead'
