-- cache_lookup: read one cache entry and, when the caller should compute the
-- value, hand it the entry's lease (single-flight across every host).
--
-- KEYS[1]  the entry: a hash {v, neg, tags, fresh, stale, delta}, expiring
--          at the end of its stale time (same hash tag as KEYS[2])
-- KEYS[2]  the entry's lease: a string holding the lease id, with the
--          lease's time to live; absent when nobody fills or refreshes
-- KEYS[3]  the entry's waiter flag: set (for the lease's remaining time to
--          live) when this caller waits for someone else's fill, so the
--          fill (or the lease's end) publishes a wake-up; absent otherwise
-- ARGV[1]  the lookup's tag snapshot: its tags with their current versions,
--          encoded by the host; an entry stored with another snapshot is
--          treated as absent (its tags were invalidated)
-- ARGV[2]  the lease id to take if this caller gets the lease
-- ARGV[3]  lease time to live in milliseconds (> 0)
-- ARGV[4]  XFetch beta; 0 turns early refresh off
-- ARGV[5]  a uniform random number in (0, 1], drawn by the host, for XFetch
-- ARGV[6]  1 if the caller will wait for someone else's fill (then a kind 4
--          reply sets KEYS[3]), else 0
--
-- Times are Redis's (TIME, in milliseconds), so hosts with skewed clocks agree.
--
-- Reply: {kind, value, negative, granted, n, fresh_left, delta} where kind is
--   1  fresh hit: value, negative (1: a remembered "not found"), granted 1
--      when XFetch chose this caller for an early refresh (it holds the
--      lease), n = now (the lease's grant time), fresh_left = milliseconds
--      of fresh time left, delta = the entry's last fill time (the host's
--      near cache keeps a fresh hit for at most fresh_left)
--   2  stale hit: value, negative, granted 1 when this caller holds the
--      refresh lease, n = now
--   3  miss: this caller holds the fill lease; n = now
--   4  miss, someone else holds the lease; n = its remaining time to live
--      in milliseconds (-1 if none); with ARGV[6] = 1 the waiter flag
--      KEYS[3] is set for that long
--   fresh_left and delta are 0 for kinds 2 to 4
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function take_lease()
  if redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3], 'NX') then
    return 1
  end
  return 0
end

local e = redis.call('HMGET', KEYS[1], 'v', 'neg', 'tags', 'fresh', 'stale', 'delta')
local fresh = tonumber(e[4])
if fresh then
  local stale = tonumber(e[5]) or fresh
  if e[3] == ARGV[1] and now < stale then
    if now < fresh then
      local granted = 0
      local beta = tonumber(ARGV[4]) or 0
      local delta = tonumber(e[6]) or 0
      if beta > 0 and delta > 0 then
        local r = tonumber(ARGV[5]) or 1
        if now - delta * beta * math.log(r) >= fresh then
          granted = take_lease()
        end
      end
      return {1, e[1] or '', tonumber(e[2]) or 0, granted, now, fresh - now, delta}
    end
    return {2, e[1] or '', tonumber(e[2]) or 0, take_lease(), now, 0, 0}
  end
  -- Invalidated by a tag, or past its stale time: gone.
  redis.call('DEL', KEYS[1])
end
if take_lease() == 1 then
  return {3, '', 0, 1, now, 0, 0}
end
local left = redis.call('PTTL', KEYS[2])
if ARGV[6] == '1' and left > 0 then
  redis.call('SET', KEYS[3], '1', 'PX', left)
end
return {4, '', 0, 0, left, 0, 0}
