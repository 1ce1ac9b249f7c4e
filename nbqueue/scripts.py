"""Lua scripts for the state changes that must be atomic: taking jobs from queues and recording outcomes.

Each script builds key names from ``nbqueue.keys.PREFIX`` passed as its first argument, so the key layout
stays defined in one module.
"""

from __future__ import annotations

import weakref

import redis

# Take up to `count` jobs from the queues, in the order given, straight into each queue's started registry.
# ARGV: prefix, worker name, now, heartbeat deadline, count, execution id base, queue names...
# Returns {started, skipped}: started is a flat list of (id, queue, execution id, timeout, function name);
# skipped is a flat list of (id, queue, reason) for ids whose job expired or left the queued state.
DEQUEUE = """
local prefix, worker, now, deadline = ARGV[1], ARGV[2], ARGV[3], ARGV[4]
local want, base = tonumber(ARGV[5]), ARGV[6]
local started, skipped = {}, {}
local taken = 0
for i = 7, #ARGV do
  local q = ARGV[i]
  while taken < want do
    local ids = redis.call('LPOP', prefix .. 'queue:' .. q, want - taken)
    if not ids then break end
    for _, id in ipairs(ids) do
      local jk = prefix .. 'job:' .. id
      local fields = redis.call('HMGET', jk, 'status', 'timeout', 'func', 'ttl')
      if not fields[1] then
        table.insert(skipped, id); table.insert(skipped, q); table.insert(skipped, 'expired')
      elseif fields[1] ~= 'queued' then
        table.insert(skipped, id); table.insert(skipped, q); table.insert(skipped, fields[1])
      else
        taken = taken + 1
        local execution = base .. ':' .. taken
        redis.call('HSET', jk, 'status', 'started', 'started_at', now, 'worker', worker, 'execution', execution)
        if fields[4] then redis.call('PERSIST', jk) end
        redis.call('ZADD', prefix .. 'started:' .. q, deadline, id)
        table.insert(started, id); table.insert(started, q); table.insert(started, execution)
        table.insert(started, fields[2] or '-1'); table.insert(started, fields[3] or '')
      end
    end
  end
end
return {started, skipped}
"""

# Record the outcome of one execution, if that execution still owns the job.
# KEYS: job hash, results stream, started registry, target registry (finished, failed, scheduled or ''),
#       output stream (expires with the job).
# ARGV: job id, execution id, new status, ttl (seconds; -1 never expires; 0 keeps nothing), now,
#       target score ('' for now + ttl), queue key for an immediate retry ('' if none),
#       n (number of extra job fields), n field/value pairs for the job hash, then the result's
#       field/value pairs for XADD.
# Returns 1 when recorded, 0 when another execution or a stop already recorded this job's outcome.
FINISH = """
local job, results, started, target, output = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, execution, status, ttl, now = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
local score, requeue, extra = ARGV[6], ARGV[7], tonumber(ARGV[8])
local current = redis.call('HMGET', job, 'status', 'execution')
if current[1] == false then
  redis.call('ZREM', started, id)
  return 0
end
if current[1] ~= 'started' or current[2] ~= execution then
  return 0
end
redis.call('ZREM', started, id)
if ttl == 0 then
  redis.call('DEL', job, results, output)
  redis.call('XADD', results, '*', 'type', '0')
  redis.call('PEXPIRE', results, 2000)
  return 1
end
local hset = {'status', status, 'ended_at', ARGV[5]}
for i = 9, 8 + 2 * extra do table.insert(hset, ARGV[i]) end
redis.call('HSET', job, unpack(hset))
local fields = {}
for i = 9 + 2 * extra, #ARGV do table.insert(fields, ARGV[i]) end
redis.call('XADD', results, 'MAXLEN', '10', '*', unpack(fields))
if ttl < 0 then
  redis.call('PERSIST', job)
  redis.call('PERSIST', results)
  redis.call('PERSIST', output)
else
  redis.call('EXPIRE', job, ttl)
  redis.call('EXPIRE', results, ttl)
  redis.call('EXPIRE', output, ttl)
end
if requeue ~= '' then
  redis.call('RPUSH', requeue, id)
elseif target ~= '' then
  if score == '' then
    if ttl < 0 then score = 'inf' else score = tostring(now + ttl) end
  end
  redis.call('ZADD', target, score, id)
end
return 1
"""




# Move due jobs from scheduled registries to their queues, if this worker holds the scheduler lock.
# KEYS: the lock key. ARGV: prefix, lock owner, lock ttl (ms), now, max jobs per queue, queue names...
# Returns {moved, earliest}: the number of jobs moved, and the earliest remaining due time ('' if none
# or if another worker holds the lock).
ENQUEUE_DUE = """
local prefix, owner, lock_ms, now, limit = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= owner then return {0, ''} end
redis.call('SET', KEYS[1], owner, 'PX', lock_ms)
local moved, earliest = 0, nil
for i = 6, #ARGV do
  local q = ARGV[i]
  local skey = prefix .. 'scheduled:' .. q
  local due = redis.call('ZRANGEBYSCORE', skey, '-inf', now, 'LIMIT', 0, limit)
  for _, id in ipairs(due) do
    redis.call('ZREM', skey, id)
    local jk = prefix .. 'job:' .. id
    if redis.call('HGET', jk, 'status') == 'scheduled' then
      redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', now)
      redis.call('RPUSH', prefix .. 'queue:' .. q, id)
      moved = moved + 1
    end
  end
  local first = redis.call('ZRANGE', skey, 0, 0, 'WITHSCORES')
  if first[2] and (earliest == nil or tonumber(first[2]) < earliest) then earliest = tonumber(first[2]) end
end
if earliest == nil then return {moved, ''} end
return {moved, tostring(earliest)}
"""

# Cancel a queued or scheduled job. KEYS: job hash, queue list, scheduled registry, canceled registry.
# ARGV: job id, now. Returns the job's status before the call (false if the job does not exist);
# the job is canceled only when that status was 'queued' or 'scheduled'.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'queued' and status ~= 'scheduled' then return status end
redis.call('LREM', KEYS[2], 0, ARGV[1])
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'canceled', 'ended_at', ARGV[2])
redis.call('ZADD', KEYS[4], ARGV[2], ARGV[1])
return status
"""

# Put a failed, stopped or canceled job back on its queue. KEYS: job hash, queue list, failed registry,
# canceled registry, results stream. ARGV: job id, now, at front ('1' or '0').
# Returns the job's status before the call (false if the job does not exist).
REQUEUE = """
local status = redis.call('HGET', KEYS[1], 'status')
if status ~= 'failed' and status ~= 'stopped' and status ~= 'canceled' then return status end
redis.call('ZREM', KEYS[3], ARGV[1])
redis.call('ZREM', KEYS[4], ARGV[1])
redis.call('HSET', KEYS[1], 'status', 'queued', 'enqueued_at', ARGV[2])
redis.call('HDEL', KEYS[1], 'ended_at', 'stop_requested')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[5])
if ARGV[3] == '1' then redis.call('LPUSH', KEYS[2], ARGV[1]) else redis.call('RPUSH', KEYS[2], ARGV[1]) end
return status
"""


class Scripts:
    """The registered scripts of one client; each call runs as one EVALSHA."""

    def __init__(self, connection: redis.Redis):
        self.dequeue = connection.register_script(DEQUEUE)
        self.finish = connection.register_script(FINISH)
        self.enqueue_due = connection.register_script(ENQUEUE_DUE)
        self.cancel = connection.register_script(CANCEL)
        self.requeue = connection.register_script(REQUEUE)


_by_client: weakref.WeakKeyDictionary[redis.Redis, Scripts] = weakref.WeakKeyDictionary()


def scripts_for(connection: redis.Redis) -> Scripts:
    """Return the scripts registered on ``connection``, registering them on first use."""
    scripts = _by_client.get(connection)
    if scripts is None:
        scripts = _by_client[connection] = Scripts(connection)
    return scripts
