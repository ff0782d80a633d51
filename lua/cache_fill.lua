-- cache_fill: store a cache entry if the caller still holds its lease, then
-- free the lease. A lease that expired, was taken over by another caller,
-- or was superseded (cache_set, invalidate) stores nothing.
--
-- KEYS[1]  the entry: a hash {v, neg, tags, fresh, stale, delta} (same hash
--          tag as KEYS[2])
-- KEYS[2]  the entry's lease: a string holding the lease id
-- KEYS[3]  the entry's waiter flag (deleted on a store)
-- ARGV[1]  the caller's lease id
-- ARGV[2]  the value
-- ARGV[3]  1 for a negative entry (a remembered "not found"), else 0
-- ARGV[4]  fresh time to live in milliseconds (> 0)
-- ARGV[5]  stale time to live after the fresh one, in milliseconds (>= 0)
-- ARGV[6]  the tag snapshot recorded when the lease was granted
-- ARGV[7]  when the lease was granted (Redis time, ms): now minus this is
--          the time the fill took, XFetch's delta
-- ARGV[8]  the plugin's cache wake-up channel (rl:<plugin>:cache-filled)
--
-- Waiters elsewhere (KEYS[3] set by cache_lookup) are woken with one
-- PUBLISH of the entry's key on ARGV[8]; nobody waiting, no PUBLISH.
--
-- Reply: 1 when stored, 0 when the lease is no longer the caller's.
if redis.call('GET', KEYS[2]) ~= ARGV[1] then
  return 0
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local fresh_ms = tonumber(ARGV[4])
local stale_ms = tonumber(ARGV[5])
local delta = now - (tonumber(ARGV[7]) or now)
if delta < 0 then delta = 0 end
redis.call('DEL', KEYS[1], KEYS[2])
redis.call('HSET', KEYS[1], 'v', ARGV[2], 'neg', ARGV[3], 'tags', ARGV[6],
  'fresh', now + fresh_ms, 'stale', now + fresh_ms + stale_ms, 'delta', delta)
redis.call('PEXPIRE', KEYS[1], fresh_ms + stale_ms)
if redis.call('DEL', KEYS[3]) == 1 then
  redis.call('PUBLISH', ARGV[8], KEYS[1])
end
return 1
