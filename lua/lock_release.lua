-- lock_release: compare-and-delete a lock on its owner id.
--
-- KEYS[1]  the lock: a hash {owner, token} with a time to live
-- ARGV[1]  the owner id the caller got when it acquired the lock
--
-- Reply: 1 when ARGV[1] held the lock and the lock is now deleted; 0 when it
-- did not (the lock expired, and may have a new holder): nothing is changed,
-- so a late release never deletes someone else's lock.
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
