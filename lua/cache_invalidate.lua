-- cache_invalidate: remove a cache entry and supersede its lease, so a fill
-- still in flight with that lease stores nothing.
--
-- KEYS[1]  the entry: a hash (same hash tag as KEYS[2])
-- KEYS[2]  the entry's lease (deleted)
-- ARGV[1]  none: the script takes no arguments
--
-- Reply: 1 when the entry existed, else 0.
local existed = redis.call('DEL', KEYS[1])
redis.call('DEL', KEYS[2])
return existed
