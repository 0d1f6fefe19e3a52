local id = ARGV[1]
local r = load(KEYS[3], id)
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return {0, ''} end
redis.call('ZREM', KEYS[1], id)
r.token = ''
local other = reclaim_unique(KEYS[4], KEYS[5], KEYS[3], id)
if other then
  r.state = 'skipped'
  r.finished = now
  save(KEYS[3], id, r)
  redis.call('HSET', KEYS[6], id,
    '{"status":"skipped","reason":"coalesced","joined":"' .. other .. '"}')
  redis.call('HDEL', KEYS[5], id)
  redis.call('ZADD', KEYS[7], now + tonumber(ARGV[5]), id)
  redis.call('HINCRBY', KEYS[8], 'skipped', 1)
  return {2, other}
end
r.state = 'scheduled'
r.attempts = math.max(r.attempts - 1, 0)
r.started = ''
r.run_at = now + tonumber(ARGV[3])
save(KEYS[3], id, r)
redis.call('HSET', KEYS[6], id, ARGV[4])
redis.call('ZADD', KEYS[2], r.run_at, id)
return {1, ''}
