local window, every = tonumber(ARGV[1]), tonumber(ARGV[2])
local vals = redis.call('HMGET', KEYS[1], 'started', 'succeeded', 'failed', 'skipped', 'cancelled')
for i = 1, #vals do vals[i] = tonumber(vals[i]) or 0 end
local sample = now .. ':' .. table.concat(vals, ':')
local last = redis.call('ZRANGE', KEYS[2], -1, -1, 'WITHSCORES')
if #last == 0 or now - tonumber(last[2]) >= every then
  redis.call('ZADD', KEYS[2], now, sample)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. (now - 2 * window))
redis.call('PEXPIRE', KEYS[2], 2 * window)
local old = redis.call('ZRANGEBYSCORE', KEYS[2], now - window, '+inf', 'LIMIT', 0, 1)
local enqueued = ''
local next_id = redis.call('LINDEX', KEYS[3], -1)
if next_id then
  local r = load(KEYS[4], next_id)
  if r then enqueued = r.enqueued end
end
return {tostring(now), sample, old[1] or sample, enqueued}
