-- queue_promote: move delayed messages that are due into the stream.
--
-- KEYS[1]  the delayed sorted set
-- KEYS[2]  the stream
-- ARGV[1]  most messages to move in one call
--
-- Reply: how many messages were moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, member in ipairs(due) do
  local m = cmsgpack.unpack(member)
  redis.call('XADD', KEYS[2], '*', 'id', m[1], 'payload', m[2], 'headers', m[3],
    'attempt', m[4], 'max', m[5], 'enq', string.format('%.0f', m[6]), 'error', m[7] or '')
  redis.call('ZREM', KEYS[1], member)
end
return #due
