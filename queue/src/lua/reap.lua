local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local r = load(KEYS[3], id)
  if r then
    r.lost = r.lost + 1
    r.token = ''
    if redis.call('HDEL', KEYS[10], id) == 1 then
      r.state = 'cancelled'
      r.finished = now
      redis.call('HSET', KEYS[11], id, '{"status":"cancelled","reason":"revoked while its worker was gone"}')
      redis.call('ZADD', KEYS[5], now + tonumber(ARGV[4]), id)
      redis.call('HINCRBY', KEYS[6], 'cancelled', 1)
    elseif r.lost >= tonumber(ARGV[2]) then
      r.state = 'failed'
      r.finished = now
      redis.call('HSET', KEYS[7], id, 'lease expired ' .. r.lost .. ' times: the worker running it was lost each time')
      redis.call('ZADD', KEYS[4], now, id)
      redis.call('ZADD', KEYS[5], now + tonumber(ARGV[3]), id)
      redis.call('HINCRBY', KEYS[6], 'failed', 1)
    else
      -- A lost worker's attempt is not the job's failure: it does not use
      -- up the retry budget (losses are bounded by max_lost instead).
      r.state = 'pending'
      r.attempts = math.max(r.attempts - 1, 0)
      redis.call('RPUSH', KEYS[2], id)
    end
    save(KEYS[3], id, r)
    if r.state == 'pending' then reclaim_unique(KEYS[8], KEYS[9], KEYS[3], id) end
  end
end
return #ids
