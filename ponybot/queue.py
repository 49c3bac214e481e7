"""Queue helpers both sides use: connect, enqueue, position, events, images, workers."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
from rq import Queue, Retry, Worker
from rq.serializers import JSONSerializer

from ponybot import keys
from ponybot.errors import NoWorkerError, QueueFullError, RedisUnavailableError
from ponybot.redis_server import running_embedded_url
from ponybot.schemas import Job, JobEvent, ProgressEvent

if TYPE_CHECKING:
    from ponybot.settings import Settings

EVENTS_MAXLEN = 10_000
#: A job counts against its member's share until its event, or this long at most.
OWNERSHIP_S = 6 * 3600
RECENT_DURATIONS_KEPT = 50

#: What ``XREAD`` answers on a client without ``decode_responses``.
StreamRead = list[tuple[bytes, list[tuple[bytes, dict[bytes, bytes]]]]]


def resolve_redis_url(settings: Settings) -> str:
    """``redis.url``, else the embedded Redis that ``ponybot up`` runs, else a clear error."""
    if settings.redis.url:
        return settings.redis.url
    url = running_embedded_url(settings.redis.embedded_dir)
    if url is None:
        raise RedisUnavailableError(
            "no Redis to talk to: set redis.url (PONYBOT_REDIS__URL), start `ponybot up`, "
            "or use `ponybot generate --local`"
        )
    return url


def connect(url: str, *, timeout: float = 5.0) -> redis.Redis:
    """A client that has answered PING, or RedisUnavailableError naming the URL."""
    client = redis.Redis.from_url(url, socket_connect_timeout=timeout, health_check_interval=30)
    try:
        client.ping()
    except redis.RedisError as error:
        raise RedisUnavailableError(f"Redis at {_redact(url)} is unreachable ({error})") from None
    return client


def _redact(url: str) -> str:
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return f"{scheme}{sep}{rest}"


def generation_queue(conn: redis.Redis) -> Queue:
    return Queue(keys.GENERATE_QUEUE, connection=conn, serializer=JSONSerializer)


def active_jobs(conn: redis.Redis, key: str) -> list[str]:
    """Job ids in a member's or server's set that are still queued or running."""
    conn.zremrangebyscore(key, "-inf", time.time())
    return [item.decode() for item in conn.zrange(key, 0, -1)]  # type: ignore[union-attr]


def unfinished_jobs(conn: redis.Redis) -> list[Job]:
    """Every job still queued or running, in every server: what a restarted bot goes on showing."""
    ids: set[str] = set()
    for key in conn.scan_iter(match=keys.GUILD_JOBS_MATCH, count=500):
        ids.update(active_jobs(conn, key.decode()))
    jobs = [load_job(conn, job_id) for job_id in sorted(ids)]
    return [job for job in jobs if job is not None]


def _owner_keys(job: Job) -> list[str]:
    if job.origin is None:
        return []
    return [keys.member_jobs(job.origin.guild_id, job.origin.user_id), keys.guild_jobs(job.origin.guild_id)]


#: Count and reserve a member's and a server's share in one step, so simultaneous requests cannot overrun it.
#: KEYS: member set, server set. ARGV: now, expiry, job id, member limit, server limit, reserve (1) or check (0).
RESERVE_SHARE = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
local mine = redis.call('ZCARD', KEYS[1])
if mine >= tonumber(ARGV[4]) then return {1, mine} end
local server = redis.call('ZCARD', KEYS[2])
if server >= tonumber(ARGV[5]) then return {2, server} end
if ARGV[6] == '1' then
  redis.call('ZADD', KEYS[1], ARGV[2], ARGV[3])
  redis.call('ZADD', KEYS[2], ARGV[2], ARGV[3])
end
return {0, mine}
"""


def check_fair_share(conn: redis.Redis, job: Job, *, per_member: int, per_guild: int, reserve: bool = False) -> None:
    """QueueFullError when the member or their server already has its share queued or running;
    with ``reserve``, atomically count the job against both when it fits."""
    if job.origin is None:
        return
    now = time.time()
    answer: list[int] = conn.eval(
        RESERVE_SHARE, 2, *_owner_keys(job), now, now + OWNERSHIP_S, job.id, per_member, per_guild,
        "1" if reserve else "0",
    )
    verdict, count = int(answer[0]), int(answer[1])
    if verdict == 1:
        raise QueueFullError(
            f"you already have {count} job(s) queued or running (the limit is {per_member}): "
            "try again when one finishes, or /cancel one"
        )
    if verdict == 2:
        raise QueueFullError(f"this server already has {per_guild} jobs queued or running: try again in a minute")


def enqueue(
    conn: redis.Redis, job: Job, *, max_queue: int, job_timeout_s: int, result_ttl_s: int, max_attempts: int = 1,
    per_member: int | None = None, per_guild: int | None = None,
) -> int:
    """Put ``job`` on the queue and return its 1-based position; QueueFullError if full."""
    queue = generation_queue(conn)
    try:
        depth = queue.count
        if depth >= max_queue:
            raise QueueFullError(f"the queue is full ({depth} jobs waiting): try again in a few minutes")
        if per_member is not None and per_guild is not None:
            check_fair_share(conn, job, per_member=per_member, per_guild=per_guild, reserve=True)
        else:
            expires = time.time() + OWNERSHIP_S
            for key in _owner_keys(job):
                conn.zadd(key, {job.id: expires})
        queue.enqueue(
            keys.GENERATE_FUNC,
            job.model_dump_json(),
            job_id=job.id,
            description=f"generate {job.id}",  # never the payload: it holds the interaction token
            job_timeout=job_timeout_s,
            result_ttl=result_ttl_s,
            failure_ttl=result_ttl_s,
            retry=Retry(max=max_attempts - 1) if max_attempts > 1 else None,
        )
        conn.set(keys.job_record(job.id), job.model_dump_json(), ex=result_ttl_s * 24)
        return queue_position(conn, job.id) or 1
    except redis.RedisError as error:
        raise RedisUnavailableError(f"Redis is unreachable ({error})") from None


def cancel_job(conn: redis.Redis, job_id: str) -> bool:
    """Take a job off the queue before a worker starts it; False if it already started."""
    queue = generation_queue(conn)
    removed = bool(queue.remove(job_id))
    if removed:
        raw = conn.get(keys.job_record(job_id))
        if raw:
            release(conn, Job.model_validate_json(raw))
        conn.delete(keys.job_record(job_id))
    return removed


def release(conn: redis.Redis, job: Job) -> None:
    """The job no longer counts against its member's and server's share."""
    for key in _owner_keys(job):
        conn.zrem(key, job.id)


def load_job(conn: redis.Redis, job_id: str) -> Job | None:
    """The job as it was queued (kept for follow-up buttons), or None once expired."""
    raw = conn.get(keys.job_record(job_id))
    return Job.model_validate_json(raw) if raw else None


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue read once: every waiting job's 1-based position, and what an ETA is made of."""

    positions: dict[str, int]
    per_job_s: float | None  #: mean of recent generation times; None before the first
    workers: int

    def eta(self, position: int) -> float | None:
        """Seconds until a job at ``position`` is done (the workers take jobs side by side)."""
        if self.per_job_s is None:
            return None
        return (-(-position // self.workers)) * self.per_job_s


def queue_snapshot(conn: redis.Redis, *, positions: bool = True) -> QueueSnapshot:
    """One read of the queue, however many jobs wait in it (the progress tracker's tick)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.lrange(keys.RECENT_DURATIONS, 0, -1)
        if positions:
            pipe.lrange(generation_queue(conn).key, 0, -1)
        replies = pipe.execute()
    recent = [float(value) for value in replies[0]]
    waiting: dict[str, int] = {}
    for index, raw in enumerate(replies[1] if positions else []):
        waiting.setdefault(raw.decode(), index + 1)
    return QueueSnapshot(waiting, sum(recent) / len(recent) if recent else None, max(1, workers_online(conn)))


def estimate_wait(conn: redis.Redis, position: int) -> float | None:
    """Seconds until a job at ``position`` is done, from recent generation times and workers online."""
    return queue_snapshot(conn, positions=False).eta(position)


def queue_position(conn: redis.Redis, job_id: str) -> int | None:
    """1-based position among waiting jobs, or None once a worker took it."""
    position = generation_queue(conn).get_job_position(job_id)
    return None if position is None else position + 1


def workers_online(conn: redis.Redis) -> int:
    return len(Worker.all(connection=conn, queue=generation_queue(conn)))


def last_event_id(conn: redis.Redis) -> str:
    """The newest id on the events stream (``0-0`` when empty): read after it for new events."""
    newest: list[tuple[bytes, dict[bytes, bytes]]] = conn.xrevrange(keys.EVENTS_STREAM, count=1)  # type: ignore[assignment]
    return newest[0][0].decode() if newest else "0-0"


#: Append a job's event unless one was appended already (the marker and the entry in one step).
#: KEYS: marker, stream, recent durations, owner sets... ARGV: marker ttl, maxlen, data, job id, duration or ''.
PUBLISH_ONCE = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then return false end
local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[3])
for i = 4, #KEYS do redis.call('ZREM', KEYS[i], ARGV[4]) end
if ARGV[5] ~= '' then
  redis.call('LPUSH', KEYS[3], ARGV[5])
  redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[6]) - 1)
end
return id
"""


def publish_event(conn: redis.Redis, event: JobEvent) -> str | None:
    """Append a finished job's event (it stops counting against its member's share); exactly once a job.

    Returns the stream entry id, or None when this job's event was appended before (a job re-run
    after its worker died between publishing and telling RQ it was done): nothing is appended then.
    """
    duration = f"{event.generation_s:.3f}" if event.kind == "done" and event.generation_s > 0 else ""
    entry_id = conn.eval(PUBLISH_ONCE, 3 + len(_owner_keys(event.job)), keys.published(event.job.id),
                         keys.EVENTS_STREAM, keys.RECENT_DURATIONS, *_owner_keys(event.job), OWNERSHIP_S,
                         EVENTS_MAXLEN, event.model_dump_json(), event.job.id, duration, RECENT_DURATIONS_KEPT)
    if entry_id is None:
        return None
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def was_published(conn: redis.Redis, job_id: str) -> bool:
    """Whether this job's ``done`` or ``failed`` event is already on the stream."""
    return bool(conn.exists(keys.published(job_id)))


def publish_progress(conn: redis.Redis, event: ProgressEvent) -> None:
    conn.publish(keys.PROGRESS_CHANNEL, event.model_dump_json())


def load_image(conn: redis.Redis, key: str) -> bytes | None:
    data: bytes | None = conn.get(key)  # type: ignore[assignment]
    return data


def wait_for_event(
    conn: redis.Redis, job_id: str, *, after: str, timeout: float | None, no_worker_timeout: float
) -> JobEvent:
    """Block until ``job_id``'s event arrives; NoWorkerError when no worker listens for too long."""
    started = time.monotonic()
    without_worker_since: float | None = None
    while timeout is None or time.monotonic() - started < timeout:
        read: StreamRead = conn.xread({keys.EVENTS_STREAM: after}, block=500, count=100)  # type: ignore[assignment]
        for _stream, entries in read or []:
            for entry_id, fields in entries:
                after = entry_id.decode()
                event = JobEvent.model_validate_json(fields[b"data"])
                if event.job.id == job_id:
                    return event
        if workers_online(conn):
            without_worker_since = None
        else:
            without_worker_since = without_worker_since or time.monotonic()
            if time.monotonic() - without_worker_since >= no_worker_timeout:
                raise NoWorkerError(
                    f"no worker has been listening on queue {keys.GENERATE_QUEUE!r} for "
                    f"{no_worker_timeout:g} s: start one with `ponybot worker`, or use --local"
                )
    raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s")
