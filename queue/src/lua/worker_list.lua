local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local out = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[3], '(' .. now, '+inf')) do
  local report = redis.call('HGET', KEYS[1], id)
  if report then
    out[#out + 1] = id
    out[#out + 1] = report
    out[#out + 1] = redis.call('HGET', KEYS[2], id) or ''
  end
end
return out
