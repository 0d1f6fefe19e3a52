local id = ARGV[1]
local r = load(KEYS[3], id)
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'failed'
r.finished = now
r.token = ''
save(KEYS[3], id, r)
redis.call('HSET', KEYS[6], id, ARGV[3])
redis.call('ZADD', KEYS[2], now, id)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[4]), id)
redis.call('HINCRBY', KEYS[5], 'failed', 1)
return 1
