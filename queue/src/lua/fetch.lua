if redis.call('EXISTS', KEYS[8]) == 1 then return {'paused', 0} end
local limits = {}
for i = 0, tonumber(ARGV[4]) - 1 do
  limits[ARGV[5 + 3 * i]] = {tonumber(ARGV[6 + 3 * i]), tonumber(ARGV[7 + 3 * i]), 0}
end
local out = {'ok', 0}
local want = tonumber(ARGV[1])
local deadline = now + tonumber(ARGV[3])
local deferred = 0
local admitted = 0
-- Tombstones and deferred jobs do not count against n: pop again, a
-- bounded number of rounds, so one call's work stays bounded too.
for _ = 1, 16 do
  if admitted >= want then break end
  local ids = redis.call('RPOP', KEYS[1], want - admitted)
  if not ids then break end
  for _, id in ipairs(ids) do
    local r = load(KEYS[6], id)
    if r and r.state == 'pending' then
      local lim = limits[r.name]
      local admit = true
      if lim then
        local interval, tolerance = lim[1], lim[1] * (lim[2] - 1)
        local tat = tonumber(redis.call('HGET', KEYS[9], r.name) or '0')
        if tat < now then tat = now end
        if tat - now > tolerance then
          admit = false
          r.state = 'scheduled'
          -- Whole ms for the record; the zset takes the same score.
          r.run_at = math.ceil(tat - tolerance + lim[3] * interval)
          lim[3] = lim[3] + 1
          save(KEYS[6], id, r)
          redis.call('ZADD', KEYS[10], r.run_at, id)
          deferred = deferred + 1
        else
          -- Fractional ms (a double holds µs exactly at today's epoch ms);
          -- %.6f keeps them, where tostring's 14 digits would not.
          redis.call('HSET', KEYS[9], r.name, string.format('%.6f', tat + interval))
        end
      end
      if admit then
        r.state = 'running'
        r.attempts = r.attempts + 1
        r.started = now
        r.worker = ARGV[2]
        -- Unique per lease: a resurrected job restarts its attempt count.
        r.token = ARGV[2] .. ':' .. r.attempts .. ':' .. now
        r.run_at = ''
        local uniq = redis.call('HGET', KEYS[7], id)
        if uniq and redis.call('HGET', KEYS[5], uniq) == id then
          redis.call('HDEL', KEYS[5], uniq)
        end
        save(KEYS[6], id, r)
        redis.call('ZADD', KEYS[2], deadline, id)
        out[#out + 1] = id
        out[#out + 1] = redis.call('HGET', KEYS[3], id) or ''
        out[#out + 1] = redis.call('HGET', KEYS[6], id)
        out[#out + 1] = redis.call('HGET', KEYS[4], id) or ''
        admitted = admitted + 1
      end
    end
  end
end
out[2] = deferred
-- Attempts started, for the dashboard's jobs-started rate.
if admitted > 0 then redis.call('HINCRBY', KEYS[11], 'started', admitted) end
return out
