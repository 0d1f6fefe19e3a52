local lost, revoked = {}, {}
for i = 2, #ARGV, 2 do
  local id, token = ARGV[i], ARGV[i + 1]
  local r = load(KEYS[2], id)
  if r and r.state == 'running' and r.token == token then
    redis.call('ZADD', KEYS[1], 'XX', now + tonumber(ARGV[1]), id)
    if redis.call('HEXISTS', KEYS[3], id) == 1 then revoked[#revoked + 1] = id end
  else
    lost[#lost + 1] = id
  end
end
return {lost, revoked}
