-- lock_extend: reset a lock's time to live, only for its owner.
--
-- KEYS[1]  the lock: a hash {owner, token} with a time to live
-- ARGV[1]  the owner id the caller got when it acquired the lock
-- ARGV[2]  the new time to live in milliseconds, counted from now (> 0)
--
-- Reply: 1 when ARGV[1] holds the lock and its time to live is now ARGV[2];
-- 0 when it does not (the lock expired, and may have a new holder): nothing
-- is changed.
if redis.call('HGET', KEYS[1], 'owner') == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
return 0
