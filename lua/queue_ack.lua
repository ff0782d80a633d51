-- queue_ack: acknowledge a processed message and delete it from the stream
-- (acknowledged messages are not kept, so the stream holds only work to do).
--
-- KEYS[1]  the stream
-- ARGV[1]  the consumer group
-- ARGV[2]  the stream entry id
--
-- Reply: 1 if it was pending and is now acknowledged; 0 if it was not
-- pending for the group (another consumer reclaimed and acknowledged it).
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 then
  redis.call('XDEL', KEYS[1], ARGV[2])
end
return acked
