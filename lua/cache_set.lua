-- cache_set: store a cache entry unconditionally (write-through) and
-- supersede any outstanding lease, so a slower filler cannot overwrite it.
--
-- KEYS[1]  the entry: a hash {v, neg, tags, fresh, stale, delta} (same hash
--          tag as KEYS[2])
-- KEYS[2]  the entry's lease (deleted)
-- KEYS[3]  the entry's waiter flag (deleted)
-- ARGV[1]  the value
-- ARGV[2]  1 for a negative entry (a remembered "not found"), else 0
-- ARGV[3]  fresh time to live in milliseconds (> 0)
-- ARGV[4]  stale time to live after the fresh one, in milliseconds (>= 0)
-- ARGV[5]  the tag snapshot (the entry's tags at their current versions)
-- ARGV[6]  the plugin's cache wake-up channel (rl:<plugin>:cache-filled)
--
-- Waiters for a superseded fill (KEYS[3] set by cache_lookup) are woken with one
-- PUBLISH of the entry's key on ARGV[6]; nobody waiting, no PUBLISH.
--
-- The entry keeps the `delta` (the time its last fill took, XFetch's
-- estimate of the origin's cost) of the entry it replaces: a `set` measures
-- no origin read. An entry only ever stored by cache_set has delta 0, so
-- XFetch never refreshes it early.
--
-- Reply: 1.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh_ms = tonumber(ARGV[3])
local stale_ms = tonumber(ARGV[4])
local delta = tonumber(redis.call('HGET', KEYS[1], 'delta')) or 0
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[1], 'neg', ARGV[2], 'tags', ARGV[5],
  'fresh', now + fresh_ms, 'stale', now + fresh_ms + stale_ms, 'delta', delta)
redis.call('PEXPIRE', KEYS[1], fresh_ms + stale_ms)
if redis.call('DEL', KEYS[3]) == 1 then
  redis.call('PUBLISH', ARGV[6], KEYS[1])
end
return 1
