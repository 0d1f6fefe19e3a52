local id = ARGV[1]
local r = load(KEYS[2], id)
if not r then return 'not_found' end
if r.state ~= 'pending' and r.state ~= 'scheduled' and r.state ~= 'retrying' then return r.state end
-- A pending id stays in the wait list as a tombstone that FETCH drops, so
-- cancelling never scans the backlog.
redis.call('ZREM', KEYS[1], id)
local uniq = redis.call('HGET', KEYS[6], id)
if uniq and redis.call('HGET', KEYS[3], uniq) == id then
  redis.call('HDEL', KEYS[3], uniq)
end
r.state = 'cancelled'
r.finished = now
r.run_at = ''
save(KEYS[2], id, r)
redis.call('HDEL', KEYS[5], id)
redis.call('HDEL', KEYS[6], id)
redis.call('ZADD', KEYS[4], now + tonumber(ARGV[2]), id)
return 'cancelled'
