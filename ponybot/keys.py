"""Every Redis key, stream, channel and queue name ponybot uses, in one place."""

from __future__ import annotations

PREFIX = "ponybot"

#: The stem of every model's RQ queue (RQ stores a queue as ``rq:queue:<name>``): :func:`generate_queue`.
GENERATE_QUEUE = "ponybot-generate"
#: The queue earlier versions put the default model's jobs in; workers move what is left there (ponybot.legacy).
LEGACY_GENERATE_QUEUE = GENERATE_QUEUE
#: The model configured out of the box.
DEFAULT_MODEL_NAME = "pony-v4"
#: What a model's name may look like (it becomes part of queue and key names).
MODEL_NAME_PATTERN = r"[a-z0-9][a-z0-9._-]{0,39}"


def generate_queue(model: str) -> str:
    """The RQ queue of one model's jobs, ``ponybot-generate:<model>`` for every model alike (so a deployment
    derives the queue it watches from the model's name alone)."""
    return f"{GENERATE_QUEUE}:{model}"


def queue_last_ticket(queue: str) -> str:
    """Counter of the tickets handed out in one RQ queue (named as RQ names it): the newest job's ticket."""
    return f"{PREFIX}:queue-tickets:{queue}"


def queue_holes(queue: str) -> str:
    """Sorted set of the tickets of jobs taken out of one RQ queue's middle (cancelled, or claimed for a batch)."""
    return f"{PREFIX}:queue-holes:{queue}"


def queue_ticket(job_id: str) -> str:
    """A queued job's ticket: its place among the jobs ever queued in its queue (expires with its record)."""
    return f"{PREFIX}:queue-ticket:{job_id}"


def worker_record(name: str) -> str:
    """A worker's heartbeat record (JSON: the models it holds, its LoRAs and embeddings); expires unless renewed."""
    return f"{PREFIX}:worker:{name}"


#: Sorted set of worker name -> time its record expires: who to read records of, without a SCAN.
WORKERS = f"{PREFIX}:workers"
#: Hash of model name -> when a worker last said it holds it (Unix time of its latest heartbeat): how long a
#: model's workers have been gone, so its jobs wait for one that is restarting but not for one long gone.
MODELS_LAST_HELD = f"{PREFIX}:models:last-held"


def recent_durations(model: str) -> str:
    """List of one model's recent generation durations (seconds), for the ETA shown to members."""
    return RECENT_DURATIONS if model == DEFAULT_MODEL_NAME else f"{RECENT_DURATIONS}:{model}"
#: The job name a ponybot worker runs (mapped to its resident pipeline, never imported);
#: a job naming anything else is refused, so Redis access cannot run code in a worker.
GENERATE_FUNC = "ponybot.generate"

#: Durable stream of ``done`` / ``failed`` events, read by the bot in a consumer group.
EVENTS_STREAM = f"{PREFIX}:events"
#: Consumer group of the bot's delivery loop on :data:`EVENTS_STREAM`.
DELIVERY_GROUP = "delivery"
#: Lossy pub/sub channel carrying progress events of every job.
PROGRESS_CHANNEL = f"{PREFIX}:progress"
#: List of recent generation durations (seconds), for the ETA shown to members.
RECENT_DURATIONS = f"{PREFIX}:recent-durations"


def image(job_id: str, index: int) -> str:
    """PNG bytes of image ``index`` of a job (expires after ``worker.result_ttl_s``)."""
    return f"{PREFIX}:image:{job_id}:{index}"


def job_record(job_id: str) -> str:
    """The job as the bot enqueued it (JSON), kept for follow-up buttons."""
    return f"{PREFIX}:job:{job_id}"


def member_jobs(guild_id: int | None, user_id: int) -> str:
    """Set of a member's queued or running job ids."""
    return f"{PREFIX}:member-jobs:{guild_id or 0}:{user_id}"


def guild_jobs(guild_id: int | None) -> str:
    """Set of a server's queued or running job ids."""
    return f"{PREFIX}:guild-jobs:{guild_id or 0}"


#: SCAN pattern matching every :func:`guild_jobs` set.
GUILD_JOBS_MATCH = f"{PREFIX}:guild-jobs:*"


def guild_policy(guild_id: int) -> str:
    """A server's default channel policy (JSON)."""
    return f"{PREFIX}:policy:guild:{guild_id}"


def channel_policy(guild_id: int, channel_id: int) -> str:
    """Hash of channel id -> policy override (JSON) for one server."""
    return f"{PREFIX}:policy:channels:{guild_id}"


def policy_audit(guild_id: int) -> str:
    """Stream of policy changes in one server (who, what, before, after)."""
    return f"{PREFIX}:policy:audit:{guild_id}"


def cooldown(guild_id: int | None, channel_id: int, user_id: int) -> str:
    """Set while a member is cooling down in a channel (expires by itself)."""
    return f"{PREFIX}:cooldown:{guild_id or 0}:{channel_id}:{user_id}"


def published(job_id: str) -> str:
    """Set by the worker in the same step that appends a job's event, so a re-run never appends a second."""
    return f"{PREFIX}:published:{job_id}"


def delivered(job_id: str) -> str:
    """Marks a job's result as posted, so a redelivered event is not posted twice."""
    return f"{PREFIX}:delivered:{job_id}"


#: Stream of posted images and gallery changes, read by the gallery in :data:`GALLERY_GROUP`.
GALLERY_STREAM = f"{PREFIX}:gallery:stream"
#: Consumer group of the gallery's ingest loop on :data:`GALLERY_STREAM`.
GALLERY_GROUP = "gallery"
#: Set of guild ids whose moderators turned the gallery on.
GALLERY_GUILDS = f"{PREFIX}:gallery:guilds"


def gallery_limit(key: str) -> str:
    """A gallery rate limit's sliding window (a sorted set of event times), e.g. for ``like:<user id>``."""
    return f"{PREFIX}:gallery:limit:{key}"


def gallery_image(job_id: str, index: int) -> str:
    """The gallery's own copy of a posted PNG, kept for ``gallery.handoff_ttl_s`` until the gallery stores it."""
    return f"{PREFIX}:gallery:image:{job_id}:{index}"


def upload(job_id: str) -> str:
    """A member's uploaded picture (PNG bytes) for an img2img job; expires with the job's record."""
    return f"{PREFIX}:upload:{job_id}"


def upload_mask(job_id: str) -> str:
    """A member's uploaded inpaint mask (PNG bytes, white = redraw); expires with the job's record."""
    return f"{PREFIX}:upload-mask:{job_id}"


def description(job_id: str) -> str:
    """The prompt a ``/describe`` job read from its picture (text), for its Generate button; expires with results."""
    return f"{PREFIX}:description:{job_id}"


def guild_styles(guild_id: int) -> str:
    """Hash of style name -> style (JSON) for one server."""
    return f"{PREFIX}:styles:{guild_id}"


def member_defaults(guild_id: int | None, user_id: int) -> str:
    """A member's own generation defaults in one server (JSON)."""
    return f"{PREFIX}:member-defaults:{guild_id or 0}:{user_id}"
def worker_safety(worker: str) -> str:
    """A worker's image check as it loaded it (JSON: classifiers loaded, those missing and why)."""
    return f"{PREFIX}:worker-safety:{worker}"


def undelivered(guild_id: int | None) -> str:
    """Hash of channel id -> results the bot could not post there (it lacks a permission); the hash expires
    :data:`UNDELIVERED_TTL_S` after its latest count."""
    return f"{PREFIX}:undelivered:{guild_id or 0}"


UNDELIVERED_TTL_S = 7 * 24 * 3600
