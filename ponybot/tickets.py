"""Queue positions without reading the queue: each job gets a ticket as it is queued.

A job's position is the queue's length less the jobs queued after it that still wait: those are the
tickets handed out after its own, less the ones taken out of the middle (the holes: cancelled, or claimed
into a batch). Reading it costs the same however long the queue is. The answer is checked against the
list itself (one ``LINDEX``); where it misses (a job sent back to the front after its worker died, a job
queued without a ticket) ``LPOS`` finds it, which costs what its position is.
"""

from __future__ import annotations

import redis
from redis.client import Pipeline
from rq.job import Job as RQJob

from ponybot import keys

#: Hand out the next ticket to the job just pushed, in the same transaction as the push.
#: KEYS: last ticket, the job's ticket, the queue. ARGV: ticket ttl. Returns {ticket, the job's position}.
TAKE_TICKET = """
local ticket = redis.call('INCR', KEYS[1])
redis.call('SET', KEYS[2], ticket, 'EX', ARGV[1])
return {ticket, redis.call('LLEN', KEYS[3])}
"""

#: Take a job out of the queue's middle, keeping the count of the tickets between right; optionally move it
#: to another list (RQ's intermediate list, for a batch claim) in the same step.
#: KEYS: queue, holes, last ticket, the job's ticket[, where to]. ARGV: job id. Returns 1 if it was there.
TAKE_OUT = """
if redis.call('LREM', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
local ticket = redis.call('GET', KEYS[4])
if ticket then
  redis.call('ZADD', KEYS[2], ticket, ticket)
  -- the tickets from the oldest one waiting to the newest are each waiting or a hole, so the oldest is at least
  -- this; older holes count for no one: forget them, and raise the bound as they go
  local above = tonumber(redis.call('GET', KEYS[3]) or '0') + 1 - redis.call('LLEN', KEYS[1])
  local floor = above - redis.call('ZCARD', KEYS[2])
  while redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. floor) > 0 do
    floor = above - redis.call('ZCARD', KEYS[2])
  end
end
if KEYS[5] then redis.call('LPUSH', KEYS[5], ARGV[1]) end
return 1
"""

#: Positions of some jobs of one queue (0: not waiting in it any more). A queue no longer than ARGV[1] is read
#: whole instead (cheaper than five reads per job asked about, when the queue is short beside them).
#: KEYS: queue, last ticket, holes, then per job its ticket and its RQ hash. ARGV: that length, then job ids.
POSITIONS = """
local length = redis.call('LLEN', KEYS[1])
local found = {}
if length <= tonumber(ARGV[1]) then
  local index = {}
  for i, id in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do index[id] = index[id] or i end
  for i = 2, #ARGV do found[i - 1] = index[ARGV[i]] or 0 end
  return found
end
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
for i = 1, #ARGV - 1 do
  local id = ARGV[i + 1]
  local position = 0
  if redis.call('HGET', KEYS[2 * i + 3], 'status') == 'queued' then
    local ticket = tonumber(redis.call('GET', KEYS[2 * i + 2]) or '-1')
    local guess = -1
    if ticket >= 0 then
      guess = length - (last - ticket - redis.call('ZCOUNT', KEYS[3], '(' .. ticket, '+inf'))
    end
    if guess >= 1 and guess <= length and redis.call('LINDEX', KEYS[1], guess - 1) == id then
      position = guess
    else
      position = (redis.call('LPOS', KEYS[1], id) or -1) + 1
    end
  end
  found[i] = position
end
return found
"""


def take_ticket(pipe: Pipeline, queue_name: str, queue_key: str, job_id: str, ttl_s: int) -> None:
    """Queue the ticket's hand-out on ``pipe`` just after the job's push: its reply is ``[ticket, position]``."""
    pipe.eval(TAKE_TICKET, 3, keys.queue_last_ticket(queue_name), keys.queue_ticket(job_id), queue_key, ttl_s)


def take_out(conn: redis.Redis, queue_name: str, queue_key: str, job_id: str, into: str | None = None) -> bool:
    """Remove a waiting job from the queue (into the list ``into``, if given); False if it was not waiting."""
    names = [queue_key, keys.queue_holes(queue_name), keys.queue_last_ticket(queue_name), keys.queue_ticket(job_id)]
    return bool(conn.eval(TAKE_OUT, len(names) + (into is not None), *names, *([into] if into else []), job_id))


#: A queue up to this many times as long as the jobs asked about is read whole (measured: bench/scale.py).
SCAN_FACTOR = 4


def positions(pipe: Pipeline | redis.Redis, queue_name: str, queue_key: str, job_ids: list[str], *,
              scan_factor: int = SCAN_FACTOR) -> object:
    """The 1-based positions of ``job_ids`` in the queue (0 where not waiting), read at once (on ``pipe``:
    queued there, its reply a list of ints); ``scan_factor`` 0 always goes by the tickets."""
    per_job = [key for job_id in job_ids for key in (keys.queue_ticket(job_id), RQJob.key_for(job_id))]
    return pipe.eval(POSITIONS, 3 + len(per_job), queue_key, keys.queue_last_ticket(queue_name),
                     keys.queue_holes(queue_name), *per_job, scan_factor * len(job_ids), *job_ids)
