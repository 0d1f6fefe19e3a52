local id = ARGV[1]
local r = load(KEYS[3], id)
if not r then return 'not_found' end
if r.state ~= 'failed' then return r.state end
if redis.call('HEXISTS', KEYS[5], id) == 0 then return 'no_args' end
redis.call('ZREM', KEYS[1], id)
redis.call('ZREM', KEYS[4], id)
r.state = 'pending'
r.attempts = 0
r.lost = 0
r.finished = ''
r.started = ''
save(KEYS[3], id, r)
redis.call('LPUSH', KEYS[2], id)
return 'queued'
