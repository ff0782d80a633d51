-- cache_invalidate: remove a cache entry and supersede its lease, so a fill
-- still in flight with that lease stores nothing.
--
-- KEYS[1]  the entry: a hash (same hash tag as KEYS[2])
-- KEYS[2]  the entry's lease (deleted)
-- KEYS[3]  the entry's waiter flag (deleted)
-- ARGV[1]  the plugin's cache wake-up channel (rl:<plugin>:cache-filled)
--
-- Waiters for a superseded fill (KEYS[3] set by cache_lookup) are woken with one
-- PUBLISH of the entry's key on ARGV[1]; nobody waiting, no PUBLISH.
-- They look again and one of them takes the lease.
--
-- Reply: 1 when the entry existed, else 0.
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
if redis.call('DEL', KEYS[3]) == 1 then
  redis.call('PUBLISH', ARGV[1], KEYS[1])
end
return existed
