local id = ARGV[1]
local r = load(KEYS[3], id)
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('ZREM', KEYS[1], id)
r.state = 'pending'
r.attempts = math.max(r.attempts - 1, 0)
r.token = ''
r.started = ''
save(KEYS[3], id, r)
reclaim_unique(KEYS[4], KEYS[5], KEYS[3], id)
redis.call('RPUSH', KEYS[2], id)
return 1
