-- queue_replay: move dead letters back into the queue, attempts reset.
--
-- KEYS[1]  the dead-letter stream
-- KEYS[2]  the stream
-- ARGV[1]  one dead-letter entry id, or "" for all
-- ARGV[2]  most messages to move in one call
--
-- Reply: how many messages were moved.
local entries
if ARGV[1] == '' then
  entries = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', tonumber(ARGV[2]))
else
  entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[1])
end
for _, e in ipairs(entries) do
  local f = {}
  for i = 1, #e[2], 2 do
    f[e[2][i]] = e[2][i + 1]
  end
  redis.call('XADD', KEYS[2], '*', 'id', f.id, 'payload', f.payload, 'headers', f.headers,
    'attempt', 1, 'max', f.max, 'enq', f.enq, 'error', '')
  redis.call('XDEL', KEYS[1], e[1])
end
return #entries
