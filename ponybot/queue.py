"""Queue helpers both sides use: connect, enqueue, position, events, images, workers."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis
import redis.sentinel
from rq import Queue, Retry
from rq.serializers import JSONSerializer

from ponybot import keys
from ponybot.connection import REDIS_AWAY, Outage, RedisTarget
from ponybot.errors import N_, NoWorkerError, QueueFullError, RedisUnavailableError
from ponybot.redis_server import running_embedded_url
from ponybot.schemas import Job, JobEvent, ProgressEvent
from ponybot.settings import sentinel_address
from ponybot.tickets import SCAN_FACTOR, positions, take_out, take_ticket
from ponybot.workers import models_online, online_workers

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
            "no Redis to talk to: set redis.url (PONYBOT_REDIS__URL) or redis.sentinels, start `ponybot up`, "
            "or use `ponybot generate --local`"
        )
    return url


def resolve_redis(settings: Settings) -> RedisTarget:
    """The sentinels in ``redis.sentinels`` when set, else :func:`resolve_redis_url`."""
    if settings.redis.sentinels:
        return RedisTarget(sentinels=tuple(sentinel_address(item) for item in settings.redis.sentinels),
                           master_name=settings.redis.master_name)
    return RedisTarget(url=resolve_redis_url(settings))


def connect(target: RedisTarget | str, *, timeout: float = 5.0) -> redis.Redis:
    """A client that has answered PING, or RedisUnavailableError naming where it looked."""
    target = RedisTarget.of(target)
    client = target.client(socket_connect_timeout=timeout, health_check_interval=30)
    try:
        client.ping()
    except redis.RedisError as error:
        raise RedisUnavailableError(f"Redis at {target.describe()} is unreachable ({redis_reason(error)})") from None
    return client


def redis_reason(error: redis.RedisError) -> str:
    """What went wrong, in a line: redis-py's sentinel errors quote every client's whole repr."""
    if isinstance(error, redis.sentinel.MasterNotFoundError):
        return "no sentinel answered with a primary of that name"
    return str(error)


def job_model(job: Job) -> str:
    """The model a job is for (jobs of earlier versions name none: the default model's queue took them)."""
    return job.request.model or keys.DEFAULT_MODEL_NAME


def generation_queue(conn: redis.Redis, model: str = keys.DEFAULT_MODEL_NAME) -> Queue:
    """The RQ queue of one model's jobs."""
    return Queue(keys.generate_queue(model), connection=conn, serializer=JSONSerializer)


def active_jobs(conn: redis.Redis, key: str) -> list[str]:
    """Job ids in a member's or server's set that are still queued or running."""
    conn.zremrangebyscore(key, "-inf", time.time())
    return [item.decode() for item in conn.zrange(key, 0, -1)]  # type: ignore[union-attr, unused-ignore]


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
        raise QueueFullError(N_("you already have {count} job(s) queued or running (the limit is {limit}): "
                                "try again when one finishes, or /cancel one"), count=count, limit=per_member)
    if verdict == 2:
        raise QueueFullError(N_("this server already has {limit} jobs queued or running: try again in a minute"),
                             limit=per_guild)


def record_ttl(result_ttl_s: int) -> int:
    """How long a job's record (and an uploaded picture it starts from) stays in Redis."""
    return result_ttl_s * 24


def enqueue(
    conn: redis.Redis, job: Job, *, max_queue: int, result_ttl_s: int, max_attempts: int = 1,
    per_member: int | None = None, per_guild: int | None = None,
) -> int:
    """Put ``job`` on its model's queue and return its 1-based position; QueueFullError if full.

    No time limit goes with it: the worker that takes the job sets one from its own measured
    speed (``worker/speed.py``), since only it knows how fast it is.
    """
    queue = generation_queue(conn, job_model(job))
    try:
        depth = queue.count
        if depth >= max_queue:
            raise QueueFullError(N_("the queue is full ({depth} jobs waiting): try again in a few minutes"),
                                 depth=depth)
        if per_member is not None and per_guild is not None:
            check_fair_share(conn, job, per_member=per_member, per_guild=per_guild, reserve=True)
        else:
            expires = time.time() + OWNERSHIP_S
            for key in _owner_keys(job):
                conn.zadd(key, {job.id: expires})
        with conn.pipeline() as pipe:  # one transaction: the push, the record and the ticket
            queue.enqueue(
                keys.GENERATE_FUNC,
                job.model_dump_json(),
                job_id=job.id,
                description=f"generate {job.id}",  # never the payload: it holds the interaction token
                job_timeout=-1,  # RQ's "none": the worker running it sets the limit
                result_ttl=result_ttl_s,
                failure_ttl=result_ttl_s,
                # a job whose worker died goes back to the front: whoever was first should not wait longest
                retry=Retry(max=max_attempts - 1, enqueue_at_front=True) if max_attempts > 1 else None,
                pipeline=pipe,
            )
            pipe.set(keys.job_record(job.id), job.model_dump_json(), ex=record_ttl(result_ttl_s))
            take_ticket(pipe, queue.name, queue.key, job.id, record_ttl(result_ttl_s))
            _ticket, position = pipe.execute()[-1]
        return int(position)  # the queue's length just after the push: nothing was read to count it
    except redis.RedisError as error:
        raise RedisUnavailableError(f"Redis is unreachable ({redis_reason(error)})") from None


def cancel_job(conn: redis.Redis, job_id: str) -> bool:
    """Take a job off its model's queue before a worker starts it; False if it already started."""
    job = load_job(conn, job_id)
    queue = generation_queue(conn, job_model(job) if job else keys.DEFAULT_MODEL_NAME)
    removed = take_out(conn, queue.name, queue.key, job_id)
    if removed:
        if job is not None:
            release(conn, job)
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
    """The queues read once: the 1-based positions of the jobs asked about, and what an ETA is made of."""

    positions: dict[str, int]  #: job id -> position in its model's queue; absent once a worker took it
    per_job_s: dict[str, float | None]  #: model -> mean of recent generation times; None before the first
    workers: dict[str, int]  #: model -> workers holding it

    def eta(self, position: int, model: str = keys.DEFAULT_MODEL_NAME) -> float | None:
        """Seconds until a job at ``position`` of ``model``'s queue is done (its workers take jobs side by side)."""
        per_job = self.per_job_s.get(model)
        if per_job is None:
            return None
        return (-(-position // max(1, self.workers.get(model, 0)))) * per_job


def queue_snapshot(conn: redis.Redis, models: list[str] | None = None, *, jobs: Sequence[Job] = (),
                   scan_factor: int = SCAN_FACTOR) -> QueueSnapshot:
    """One read of the models' queues (the progress tracker's tick): the positions of ``jobs`` cost the same
    however many other jobs wait (:mod:`ponybot.tickets`; ``scan_factor`` as there)."""
    waiting: dict[str, list[str]] = {}
    for job in jobs:
        waiting.setdefault(job_model(job), []).append(job.id)
    models = list(dict.fromkeys([*(models or [keys.DEFAULT_MODEL_NAME]), *waiting]))
    with conn.pipeline(transaction=False) as pipe:
        for model in models:
            pipe.lrange(keys.recent_durations(model), 0, -1)
            if waiting.get(model):
                queue = generation_queue(conn, model)
                positions(pipe, queue.name, queue.key, waiting[model], scan_factor=scan_factor)
        replies = iter(pipe.execute())
    per_job: dict[str, float | None] = {}
    found: dict[str, int] = {}
    for model in models:
        recent = [float(value) for value in next(replies)]
        per_job[model] = sum(recent) / len(recent) if recent else None
        if waiting.get(model):
            found.update((job_id, int(at)) for job_id, at in zip(waiting[model], next(replies), strict=True) if at)
    held = models_online(conn)
    return QueueSnapshot(found, per_job, {model: len(held.get(model, [])) for model in models})


def estimate_wait(conn: redis.Redis, position: int, model: str = keys.DEFAULT_MODEL_NAME) -> float | None:
    """Seconds until a job at ``position`` of ``model``'s queue is done, from recent times and its workers."""
    return queue_snapshot(conn, [model]).eta(position, model)


def queue_position(conn: redis.Redis, job_id: str, model: str = keys.DEFAULT_MODEL_NAME) -> int | None:
    """1-based position among the model's waiting jobs, or None once a worker took it."""
    position = generation_queue(conn, model).get_job_position(job_id)
    return None if position is None else position + 1


def workers_online(conn: redis.Redis, model: str | None = None) -> int:
    """Workers online (holding ``model``, when given), from their heartbeat records."""
    if model is None:
        return len(online_workers(conn))
    return len(models_online(conn).get(model, []))


def require_worker(conn: redis.Redis, model: str) -> None:
    """NoWorkerError naming the model when no worker online holds it: its job would wait forever."""
    held = models_online(conn)
    if model not in held:
        online = ", ".join(sorted(held)) or "none"
        raise NoWorkerError(f"no worker online holds the model {model!r} (models online: {online})")


def last_event_id(conn: redis.Redis) -> str:
    """The newest id on the events stream (``0-0`` when empty): read after it for new events."""
    newest: list[tuple[bytes, dict[bytes, bytes]]] = conn.xrevrange(keys.EVENTS_STREAM, count=1)  # type: ignore[assignment, unused-ignore]
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
    owners = _owner_keys(event.job)
    entry_id = conn.eval(PUBLISH_ONCE, 3 + len(owners), keys.published(event.job.id), keys.EVENTS_STREAM,
                         keys.recent_durations(job_model(event.job)), *owners, OWNERSHIP_S, EVENTS_MAXLEN,
                         event.model_dump_json(), event.job.id, duration, RECENT_DURATIONS_KEPT)
    if entry_id is None:
        return None
    return entry_id.decode() if isinstance(entry_id, bytes) else str(entry_id)


def was_published(conn: redis.Redis, job_id: str) -> bool:
    """Whether this job's ``done`` or ``failed`` event is already on the stream."""
    return bool(conn.exists(keys.published(job_id)))


def publish_progress(conn: redis.Redis, event: ProgressEvent) -> None:
    conn.publish(keys.PROGRESS_CHANNEL, event.model_dump_json())


def load_image(conn: redis.Redis, key: str) -> bytes | None:
    data: bytes | None = conn.get(key)  # type: ignore[assignment, unused-ignore]
    return data


def wait_for_event(
    conn: redis.Redis, job_id: str, *, after: str, timeout: float | None, no_worker_timeout: float,
    model: str = keys.DEFAULT_MODEL_NAME, outage_patience_s: float = 0.0, where: str = "",
) -> JobEvent:
    """Block until ``job_id``'s event arrives; NoWorkerError when no worker listens for too long.

    Redis going away meanwhile (a restart, a failover) is waited out for ``outage_patience_s``, then
    RedisOutageError naming the job; the stream keeps what came meanwhile, read from ``after`` on once it is back.
    """
    outage = Outage(f"the wait for job {job_id}", outage_patience_s, where=where, give_up=True,
                    hint="it may still finish once Redis is back")
    started = time.monotonic()
    without_worker_since: float | None = None
    while timeout is None or time.monotonic() - started < timeout:
        try:
            read: StreamRead = conn.xread({keys.EVENTS_STREAM: after}, block=500, count=100)  # type: ignore[assignment, unused-ignore]
            online = workers_online(conn, model)
        except REDIS_AWAY as error:
            time.sleep(outage.away(error))
            continue
        outage.back()
        for _stream, entries in read or []:
            for entry_id, fields in entries:
                after = entry_id.decode()
                event = JobEvent.model_validate_json(fields[b"data"])
                if event.job.id == job_id:
                    return event
        if online:
            without_worker_since = None
        else:
            without_worker_since = without_worker_since or time.monotonic()
            if time.monotonic() - without_worker_since >= no_worker_timeout:
                raise NoWorkerError(
                    f"no worker holding the model {model!r} has been online for "
                    f"{no_worker_timeout:g} s: start one with `ponybot worker --models {model}`, or use --local"
                )
    raise TimeoutError(f"job {job_id} did not finish within {timeout:g} s")
