"""Lua scripts for the state changes that must be atomic: taking jobs from queues and recording outcomes.

Each script builds key names from ``nbqueue.keys.PREFIX`` passed as its first argument, so the key layout
stays defined in one module.
"""

from __future__ import annotations

import weakref

import redis

# Take up to `count` jobs from the queues, in the order given, straight into each queue's started registry.
# The job hash keeps status 'queued' until the worker marks it started (see MARK_STARTED), so a job that
# runs for a few milliseconds costs no write when it starts; the started registry is what says it is taken.
# ARGV: prefix, worker name, lease deadline, count, largest payload returned inline (bytes), n, n field
# names, queue names. The worker's name is stored in the holders hash for each job taken.
# Returns {rows, skipped}. Each row is {id, queue, value of each field..., payload or false}; a payload
# over the inline limit is returned as false for the work horse to read itself. skipped is a flat list of
# (id, queue, reason) for ids whose job expired or left the queued state.
DEQUEUE = """
local prefix, worker, deadline = ARGV[1], ARGV[2], ARGV[3]
local want, inline, nfields = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local names = {'status', 'ttl'}
for i = 7, 6 + nfields do table.insert(names, ARGV[i]) end
table.insert(names, 'payload')
local rows, skipped, holders = {}, {}, {}
local taken = 0
for i = 7 + nfields, #ARGV do
  local q = ARGV[i]
  local members = {}
  while taken < want do
    local ids = redis.call('LPOP', prefix .. 'queue:' .. q, want - taken)
    if not ids then break end
    for _, id in ipairs(ids) do
      local jk = prefix .. 'job:' .. id
      local values = redis.call('HMGET', jk, unpack(names))
      if not values[1] then
        table.insert(skipped, id); table.insert(skipped, q); table.insert(skipped, 'expired')
      elseif values[1] ~= 'queued' then
        table.insert(skipped, id); table.insert(skipped, q); table.insert(skipped, values[1])
      else
        taken = taken + 1
        if values[2] then redis.call('PERSIST', jk) end
        table.insert(holders, id); table.insert(holders, worker)
        table.insert(members, deadline); table.insert(members, id)
        local row = {id, q}
        for k = 3, #names do row[k] = values[k] end
        if values[#names] and #values[#names] > inline then row[#names] = false end
        table.insert(rows, row)
      end
    end
  end
  if #members > 0 then redis.call('ZADD', prefix .. 'started:' .. q, unpack(members)) end
end
if #holders > 0 then redis.call('HSET', prefix .. 'holders', unpack(holders)) end
return {rows, skipped}
"""

# Mark taken jobs as started, unless their outcome is already recorded (they left the started registry).
# ARGV: prefix, worker name, then (id, queue, started_at) triples. Returns the number marked.
MARK_STARTED = """
local prefix, worker, marked = ARGV[1], ARGV[2], 0
for i = 3, #ARGV, 3 do
  local id, q = ARGV[i], ARGV[i + 1]
  if redis.call('ZSCORE', prefix .. 'started:' .. q, id) then
    redis.call('HSET', prefix .. 'job:' .. id, 'status', 'started', 'started_at', ARGV[i + 2], 'worker', worker)
    marked = marked + 1
  end
end
return marked
"""

# Put taken jobs that never ran back at the head of their queues, in their original order.
# ARGV: prefix, then (id, queue) pairs in the order they were taken. Returns the number returned.
RETURN_TO_QUEUE = """
local prefix, returned = ARGV[1], 0
for i = #ARGV - 1, 2, -2 do
  local id, q = ARGV[i], ARGV[i + 1]
  if redis.call('ZREM', prefix .. 'started:' .. q, id) == 1 then
    redis.call('HDEL', prefix .. 'holders', id)
    local jk = prefix .. 'job:' .. id
    if redis.call('HGET', jk, 'status') == 'started' then redis.call('HSET', jk, 'status', 'queued') end
    redis.call('LPUSH', prefix .. 'queue:' .. q, id)
    returned = returned + 1
  end
end
return returned
"""

# Record the outcomes of several executions. An outcome is recorded only while its job is still in its
# queue's started registry; that check is the guard against two writers (a worker that lost its lease,
# and the worker that found the job abandoned).
# ARGV: prefix, now, number of records, then per record: job id, queue, new status, ttl (seconds; -1
#   never expires; 0 keeps nothing), target registry name ('finished', 'failed', 'scheduled' or ''),
#   target score ('' for now + ttl), '1' to push the job back on its queue, '1' if the job wrote output,
#   n, n job field/value pairs, m, m result field/value pairs.
# Returns a list with 1 for each recorded outcome and 0 for each one dropped by the guard.
FINISH = """
local prefix, now, count = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])
local records, by_queue = {}, {}
local i = 4
for r = 1, count do
  local rec = {id = ARGV[i], q = ARGV[i + 1], status = ARGV[i + 2], ttl = tonumber(ARGV[i + 3]),
               target = ARGV[i + 4], score = ARGV[i + 5], requeue = ARGV[i + 6], output = ARGV[i + 7]}
  local nh = tonumber(ARGV[i + 8])
  rec.hset = {'status', rec.status}
  for k = i + 9, i + 8 + 2 * nh do table.insert(rec.hset, ARGV[k]) end
  i = i + 9 + 2 * nh
  local nr = tonumber(ARGV[i])
  rec.result = {}
  for k = i + 1, i + 2 * nr do table.insert(rec.result, ARGV[k]) end
  i = i + 1 + 2 * nr
  records[r] = rec
  if not by_queue[rec.q] then by_queue[rec.q] = {} end
  table.insert(by_queue[rec.q], rec)
end
local released = {}
for q, recs in pairs(by_queue) do
  local ids = {}
  for _, rec in ipairs(recs) do table.insert(ids, rec.id) end
  local scores = redis.call('ZMSCORE', prefix .. 'started:' .. q, unpack(ids))
  local owned = {}
  for k, rec in ipairs(recs) do
    if scores[k] then rec.owned = true; table.insert(owned, rec.id); table.insert(released, rec.id) end
  end
  if #owned > 0 then redis.call('ZREM', prefix .. 'started:' .. q, unpack(owned)) end
end
if #released > 0 then redis.call('HDEL', prefix .. 'holders', unpack(released)) end
local zadds, pushes, recorded = {}, {}, {}
for r, rec in ipairs(records) do
  recorded[r] = 0
  if rec.owned then
    recorded[r] = 1
    local jk, rk, ok = prefix .. 'job:' .. rec.id, prefix .. 'results:' .. rec.id, prefix .. 'output:' .. rec.id
    if rec.ttl == 0 then
      redis.call('DEL', jk, rk, ok)
      redis.call('XADD', rk, '*', 'type', '0')
      redis.call('PEXPIRE', rk, 2000)
    else
      redis.call('HSET', jk, unpack(rec.hset))
      redis.call('XADD', rk, 'MAXLEN', '10', '*', unpack(rec.result))
      if rec.ttl < 0 then
        redis.call('PERSIST', jk)
        redis.call('PERSIST', rk)
        if rec.output == '1' then redis.call('PERSIST', ok) end
      else
        redis.call('EXPIRE', jk, rec.ttl)
        redis.call('EXPIRE', rk, rec.ttl)
        if rec.output == '1' then redis.call('EXPIRE', ok, rec.ttl) end
      end
      if rec.requeue == '1' then
        if not pushes[rec.q] then pushes[rec.q] = {} end
        table.insert(pushes[rec.q], rec.id)
      elseif rec.target ~= '' then
        local score = rec.score
        if score == '' then
          if rec.ttl < 0 then score = 'inf' else score = tostring(now + rec.ttl) end
        end
        local key = prefix .. rec.target .. ':' .. rec.q
        if not zadds[key] then zadds[key] = {} end
        table.insert(zadds[key], score); table.insert(zadds[key], rec.id)
      end
    end
  end
end
for key, args in pairs(zadds) do redis.call('ZADD', key, unpack(args)) end
for q, ids in pairs(pushes) do redis.call('RPUSH', prefix .. 'queue:' .. q, unpack(ids)) end
return recorded
"""

# A job's fields, with status 'started' and the worker's name for a job still 'queued' in its hash but
# taken by a worker (see MARK_STARTED). KEYS: job hash. ARGV: prefix, job id, field names (status first,
# then queue, then worker, then any others). Returns the values in the order of the names.
FETCH = """
local values = redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
if values[1] == 'queued' and values[2] and redis.call('ZSCORE', ARGV[1] .. 'started:' .. values[2], ARGV[2]) then
  values[1] = 'started'
  if not values[3] then values[3] = redis.call('HGET', ARGV[1] .. 'holders', ARGV[2]) end
end
return values
"""

# The status of a job: 'started' for a job still 'queued' in its hash but taken by a worker.
# KEYS: job hash. ARGV: prefix, job id. Returns the status, or false if the job does not exist.
GET_STATUS = """
local values = redis.call('HMGET', KEYS[1], 'status', 'queue')
if values[1] == 'queued' and values[2] and redis.call('ZSCORE', ARGV[1] .. 'started:' .. values[2], ARGV[2]) then
  return 'started'
end
return values[1]
"""

# Move due jobs from scheduled registries to their queues. A short lock (SET NX PX) lets one worker move
# them at a time: a worker that finds it held by another returns at once and tries again when it lapses.
# KEYS: the lock key. ARGV: prefix, lock owner, lock ttl (ms), now, max jobs per queue, queue names...
# Returns {moved, earliest, retry_ms}: the number of jobs moved, the earliest remaining due time ('' if
# none), and, when another worker held the lock, the milliseconds until it lapses (else 0).
ENQUEUE_DUE = """
local prefix, owner, lock_ms, now, limit = ARGV[1], ARGV[2], ARGV[3], tonumber(ARGV[4]), tonumber(ARGV[5])
if not redis.call('SET', KEYS[1], owner, 'NX', 'PX', lock_ms) and redis.call('GET', KEYS[1]) ~= owner then
  return {0, '', redis.call('PTTL', KEYS[1])}
end
local moved, earliest = 0, nil
for i = 6, #ARGV do
  local q = ARGV[i]
  local skey = prefix .. 'scheduled:' .. q
  local first = redis.call('ZRANGE', skey, '-inf', '+inf', 'BYSCORE', 'LIMIT', 0, limit + 1, 'WITHSCORES')
  local due = {}
  for k = 1, #first, 2 do
    local score = tonumber(first[k + 1])
    if score <= now and #due < limit then
      table.insert(due, first[k])
    elseif earliest == nil or score < earliest then
      earliest = score
    end
  end
  if #due > 0 then
    redis.call('ZREM', skey, unpack(due))
    for _, id in ipairs(due) do
      local jk = prefix .. 'job:' .. id
      if redis.call('HGET', jk, 'status') == 'scheduled' then
        redis.call('HSET', jk, 'status', 'queued', 'enqueued_at', ARGV[4])
        redis.call('RPUSH', prefix .. 'queue:' .. q, id)
        moved = moved + 1
      end
    end
  end
end
redis.call('DEL', KEYS[1])
if earliest == nil then return {moved, '', 0} end
return {moved, tostring(earliest), 0}
"""

# Cancel a queued or scheduled job. KEYS: job hash, queue list, scheduled registry, canceled registry,
# started registry.
# ARGV: job id, now. Returns the job's status before the call (false if the job does not exist);
# the job is canceled only when that status was 'queued' or 'scheduled'.
CANCEL = """
local status = redis.call('HGET', KEYS[1], 'status')
if status == 'queued' and redis.call('ZSCORE', KEYS[5], ARGV[1]) then return 'started' end
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
redis.call('HDEL', KEYS[1], 'ended_at', 'progress_done', 'progress_total', 'progress_message', 'progress_at')
redis.call('PERSIST', KEYS[1])
redis.call('PERSIST', KEYS[5])
if ARGV[3] == '1' then redis.call('LPUSH', KEYS[2], ARGV[1]) else redis.call('RPUSH', KEYS[2], ARGV[1]) end
return status
"""


class Scripts:
    """The registered scripts of one client; each call runs as one EVALSHA."""

    def __init__(self, connection: redis.Redis):
        self.dequeue = connection.register_script(DEQUEUE)
        self.mark_started = connection.register_script(MARK_STARTED)
        self.return_to_queue = connection.register_script(RETURN_TO_QUEUE)
        self.finish = connection.register_script(FINISH)
        self.get_status = connection.register_script(GET_STATUS)
        self.fetch = connection.register_script(FETCH)
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
