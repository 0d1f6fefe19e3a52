local r = load(KEYS[1], ARGV[1])
if not r then return 'not_found' end
if r.state ~= 'running' then return r.state end
redis.call('HSET', KEYS[2], ARGV[1], now)
return 'revoking'
