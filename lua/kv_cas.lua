-- kv_cas: compare-and-swap one string key.
--
-- KEYS[1]  the key
-- ARGV[1]  "1" when an expected value is given, "0" when the key must be absent
-- ARGV[2]  the expected value (ignored when ARGV[1] is "0")
-- ARGV[3]  the new value
-- ARGV[4]  time to live of the new value in milliseconds, "0" for none
--
-- Reply: 1 when the value was replaced, 0 when the current value did not match.
-- A key holding a non-string value fails with WRONGTYPE, as GET does.
local current = redis.call('GET', KEYS[1])
if ARGV[1] == '1' then
  if current ~= ARGV[2] then
    return 0
  end
elseif current then
  return 0
end
if ARGV[4] ~= '0' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('SET', KEYS[1], ARGV[3])
end
return 1
