-- queue_enqueue: add a message to a queue, now or after a delay, at most
-- once per dedupe id, refusing (never trimming) when the backlog is full.
--
-- KEYS[1]  the stream
-- KEYS[2]  the delayed sorted set (score: due time in ms)
-- KEYS[3]  the id sequence counter
-- KEYS[4]  the dedupe key for this dedupe id (unused when ARGV[4] is "0")
-- ARGV[1]  payload
-- ARGV[2]  headers (JSON object)
-- ARGV[3]  delay in ms ("0": now)
-- ARGV[4]  dedupe window in ms ("0": no dedupe)
-- ARGV[5]  max attempts ("0": the consumer's default)
-- ARGV[6]  max length: messages in the stream plus delayed ones
--
-- Reply: {id, status}; status is "new", "duplicate" (id is the first
-- message's) or "full" (nothing added, id is "").
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local dedupe = ARGV[4] ~= '0'
if dedupe then
  local existing = redis.call('GET', KEYS[4])
  if existing then
    return {existing, 'duplicate'}
  end
end
local backlog = redis.call('XLEN', KEYS[1]) + redis.call('ZCARD', KEYS[2])
if backlog >= tonumber(ARGV[6]) then
  return {'', 'full'}
end
local id = string.format('%.0f-%d', now, redis.call('INCR', KEYS[3]))
local delay = tonumber(ARGV[3])
if delay > 0 then
  local member = cmsgpack.pack({id, ARGV[1], ARGV[2], 1, ARGV[5], now, ''})
  redis.call('ZADD', KEYS[2], now + delay, member)
else
  redis.call('XADD', KEYS[1], '*', 'id', id, 'payload', ARGV[1], 'headers', ARGV[2],
    'attempt', 1, 'max', ARGV[5], 'enq', string.format('%.0f', now), 'error', '')
end
if dedupe then
  redis.call('SET', KEYS[4], id, 'PX', ARGV[4])
end
return {id, 'new'}
