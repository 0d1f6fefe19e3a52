local id = ARGV[1]
local r = load(KEYS[3], id)
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'retrying'
r.run_at = now + tonumber(ARGV[4])
r.token = ''
save(KEYS[3], id, r)
redis.call('HSET', KEYS[5], id, ARGV[3])
redis.call('ZADD', KEYS[2], r.run_at, id)
reclaim_unique(KEYS[6], KEYS[7], KEYS[3], id)
redis.call('HINCRBY', KEYS[4], 'retried', 1)
return 1
