local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  local r = load(KEYS[3], id)
  if r then
    r.state = 'pending'
    save(KEYS[3], id, r)
    redis.call('RPUSH', KEYS[2], id)
  end
end
local nxt = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
local due = -1
if nxt[2] then due = math.max(tonumber(nxt[2]) - now, 0) end
return {#ids, due}
