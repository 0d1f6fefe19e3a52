local __t = redis.call('TIME')
local now = tonumber(__t[1]) * 1000 + math.floor(tonumber(__t[2]) / 1000)
local function load(live, id)
  local s = redis.call('HGET', live, id)
  if not s then return nil end
  local f = {}
  for v in string.gmatch(s .. '\t', '([^\t]*)\t') do f[#f + 1] = v end
  return {state = f[1], attempts = tonumber(f[2]) or 0, enqueued = f[3] or '',
          started = f[4] or '', finished = f[5] or '', worker = f[6] or '',
          token = f[7] or '', lost = tonumber(f[8]) or 0, run_at = f[9] or '',
          name = f[10] or ''}
end
local function save(live, id, r)
  redis.call('HSET', live, id, table.concat({r.state, r.attempts, r.enqueued, r.started,
    r.finished, r.worker, r.token, r.lost, r.run_at, r.name}, '\t'))
end
-- A job going back to the queue takes its unique key again, unless another
-- pending or scheduled job holds it now: returns that job's id, else nil.
local function reclaim_unique(unique, uniq_of, live, id)
  local uniq = redis.call('HGET', uniq_of, id)
  if not uniq then return nil end
  local holder = redis.call('HGET', unique, uniq)
  if holder and holder ~= id then
    local h = load(live, holder)
    if h and (h.state == 'pending' or h.state == 'scheduled' or h.state == 'retrying') then
      return holder
    end
  end
  redis.call('HSET', unique, uniq, id)
  return nil
end
