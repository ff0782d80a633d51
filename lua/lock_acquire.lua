-- lock_acquire: take a lock if it is free, with a new fencing token.
--
-- KEYS[1]  the lock: a hash {owner, token} with a time to live; absent when free
-- KEYS[2]  the lock's fencing counter (same hash tag as KEYS[1]; never expires)
-- ARGV[1]  the owner id of this acquisition (unique per acquisition)
-- ARGV[2]  time to live of the lock in milliseconds (> 0)
--
-- Reply: {1, token, ''} when the lock was free and is now held by ARGV[1];
-- token is the fencing counter after INCR, so it is greater than every token
-- handed out before for this name, by any host.
-- {0, pttl, owner} when the lock is held: pttl is its remaining time to live
-- in milliseconds (-1 if it has none), owner the holder's owner id.
if redis.call('EXISTS', KEYS[1]) == 1 then
  local owner = redis.call('HGET', KEYS[1], 'owner') or ''
  return {0, redis.call('PTTL', KEYS[1]), owner}
end
local token = redis.call('INCR', KEYS[2])
redis.call('HSET', KEYS[1], 'owner', ARGV[1], 'token', token)
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return {1, token, ''}
