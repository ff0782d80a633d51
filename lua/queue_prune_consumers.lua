-- queue_prune_consumers: remove the group's consumers that hold no pending
-- messages and have been idle at least ARGV[2] ms (their process died or
-- was stopped; each process joins under a name of its own). A consumer
-- with pending messages is never removed (XGROUP DELCONSUMER would drop
-- them from the group): another consumer reclaims them first, and the
-- consumer goes on a later call. The check and the removal are one script,
-- so no message becomes pending for a consumer between them. Removing a
-- live consumer would only make its next read join the group again.
--
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  least idle time of a consumer to remove, in ms
-- ARGV[3]  the calling consumer (never removed)
--
-- Reply: the names of the consumers removed (none when the stream or the
-- group does not exist).
local info = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(info) ~= 'table' or info.err then
  return {}
end
local min_idle = tonumber(ARGV[2])
local removed = {}
for _, c in ipairs(info) do
  local f = {}
  for i = 1, #c, 2 do
    f[c[i]] = c[i + 1]
  end
  if f.name and f.name ~= ARGV[3] and f.pending == 0 and f.idle >= min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f.name)
    removed[#removed + 1] = f.name
  end
end
return removed
