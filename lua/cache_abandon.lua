-- cache_abandon: give up a cache lease (compare-and-delete), so the next
-- lookup hands it out at once.
--
-- KEYS[1]  the entry: a hash (not touched; named for the wake-up payload
--          and so every cache script passes the same keys)
-- KEYS[2]  the entry's lease: a string holding the lease id
-- KEYS[3]  the entry's waiter flag (deleted when the lease is freed)
-- ARGV[1]  the caller's lease id
-- ARGV[2]  the plugin's cache wake-up channel (rl:<plugin>:cache-filled)
--
-- Waiters (KEYS[3] set by cache_lookup) are woken with one
-- PUBLISH of the entry's key on ARGV[2]; nobody waiting, no PUBLISH.
-- They look again and one of them takes the lease.
--
-- Reply: 1 when the caller held the lease and it is now free, else 0.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
redis.call('DEL', KEYS[2])
if redis.call('DEL', KEYS[3]) == 1 then
  redis.call('PUBLISH', ARGV[2], KEYS[1])
end
return 1
