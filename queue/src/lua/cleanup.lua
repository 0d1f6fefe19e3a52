local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, id in ipairs(ids) do
  redis.call('ZREM', KEYS[1], id)
  redis.call('ZREM', KEYS[5], id)
  for k = 2, 9 do
    if k ~= 5 then redis.call('HDEL', KEYS[k], id) end
  end
end
return #ids
