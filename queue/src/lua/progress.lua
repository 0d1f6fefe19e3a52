local r = load(KEYS[1], ARGV[1])
if not r or r.state ~= 'running' or r.token ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
return 1
