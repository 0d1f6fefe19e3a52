local id, uniq = ARGV[1], ARGV[5]
local schedule = ARGV[7]
if schedule ~= '' then
  local last = redis.call('HGET', KEYS[8], schedule)
  if last and tonumber(string.match(last, '^%-?%d+')) >= tonumber(ARGV[8]) then
    return {2, ''}
  end
  redis.call('HSET', KEYS[8], schedule, ARGV[8] .. ' ' .. id .. ' ' .. ARGV[9])
end
if uniq ~= '' then
  local existing = redis.call('HGET', KEYS[5], uniq)
  if existing then
    local r = load(KEYS[6], existing)
    if r and (r.state == 'pending' or r.state == 'scheduled' or r.state == 'retrying') then
      -- A tick that joins a waiting job is run by that job.
      if schedule ~= '' then
        redis.call('HSET', KEYS[8], schedule, ARGV[8] .. ' ' .. existing .. ' ' .. ARGV[9])
      end
      return {0, existing}
    end
  end
  redis.call('HSET', KEYS[5], uniq, id)
  redis.call('HSET', KEYS[7], id, uniq)
end
local delay = tonumber(ARGV[4])
local r = {state = 'pending', attempts = 0, enqueued = now, started = '', finished = '',
           worker = '', token = '', lost = 0, run_at = '', name = ARGV[6]}
if delay > 0 then
  r.state = 'scheduled'
  r.run_at = now + delay
end
save(KEYS[6], id, r)
redis.call('HSET', KEYS[3], id, ARGV[2])
redis.call('HSET', KEYS[4], id, ARGV[3])
if delay > 0 then
  redis.call('ZADD', KEYS[2], now + delay, id)
else
  redis.call('LPUSH', KEYS[1], id)
end
return {1, id}
