local out = {}
local expire = now + tonumber(ARGV[1])
for i = 2, #ARGV, 4 do
  local id, token, state = ARGV[i], ARGV[i + 1], ARGV[i + 2]
  local r = load(KEYS[2], id)
  if not r or r.state ~= 'running' or r.token ~= token then
    out[#out + 1] = 0
  else
    redis.call('ZREM', KEYS[1], id)
    r.state = state
    r.finished = now
    r.token = ''
    save(KEYS[2], id, r)
    redis.call('HSET', KEYS[5], id, ARGV[i + 3])
    redis.call('HDEL', KEYS[4], id)
    redis.call('HDEL', KEYS[7], id)
    redis.call('HDEL', KEYS[8], id)
    redis.call('ZADD', KEYS[3], expire, id)
    redis.call('HINCRBY', KEYS[6], state, 1)
    out[#out + 1] = 1
  end
end
return out
