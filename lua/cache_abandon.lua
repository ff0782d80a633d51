-- cache_abandon: give up a cache lease (compare-and-delete), so the next
-- lookup hands it out at once.
--
-- KEYS[1]  the entry's lease: a string holding the lease id
-- ARGV[1]  the caller's lease id
--
-- Reply: 1 when the caller held the lease and it is now free, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
