"""Which workers are online and what they hold: each worker renews a short-lived record in Redis.

A worker writes its record (the models it holds, the LoRAs and embeddings it can use) every
``worker.heartbeat_s`` with a time-to-live of three heartbeats, and deletes it when it stops. A
worker that dies therefore disappears from ``/generate``'s model list within three heartbeats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import redis
from pydantic import BaseModel, ConfigDict, Field

from ponybot import keys
from ponybot.errors import N_, InvalidRequestError
from ponybot.networks import LoraRef, check_lora_count, find_embeddings, parse_loras
from ponybot.schemas import GenerationRequest, Versioned, utcnow


class NetworkInfo(BaseModel):
    """A LoRA or embedding file a worker found: usable, or why not."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    problem: str | None = None  #: None: usable


class WorkerRecord(Versioned):
    name: str
    models: list[str]
    descriptions: dict[str, str] = Field(default_factory=dict)
    device: str = ""
    loras: list[NetworkInfo] = Field(default_factory=list)
    embeddings: list[NetworkInfo] = Field(default_factory=list)
    seen_at: datetime = Field(default_factory=utcnow)


def record_ttl(heartbeat_s: float) -> int:
    return max(3, int(3 * heartbeat_s))


def publish_worker(conn: redis.Redis, record: WorkerRecord, heartbeat_s: float) -> None:
    """The worker's record, renewed for three heartbeats, and now as the time its models last had a worker."""
    ttl = record_ttl(heartbeat_s)
    now = time.time()
    with conn.pipeline(transaction=False) as pipe:
        pipe.set(keys.worker_record(record.name), record.model_dump_json(), ex=ttl)
        pipe.zadd(keys.WORKERS, {record.name: now + ttl})
        if record.models:
            pipe.hset(keys.MODELS_LAST_HELD, mapping=dict.fromkeys(record.models, now))
        pipe.execute()


def remove_worker(conn: redis.Redis, name: str) -> None:
    with conn.pipeline(transaction=False) as pipe:
        pipe.delete(keys.worker_record(name))
        pipe.zrem(keys.WORKERS, name)
        pipe.execute()


def online_workers(conn: redis.Redis) -> list[WorkerRecord]:
    """The records of every worker whose last heartbeat is recent (two round trips)."""
    with conn.pipeline(transaction=False) as pipe:
        pipe.zremrangebyscore(keys.WORKERS, "-inf", time.time())
        pipe.zrange(keys.WORKERS, 0, -1)
        names = [name.decode() for name in pipe.execute()[1]]
    if not names:
        return []
    raws: list[bytes | None] = conn.mget([keys.worker_record(name) for name in names])  # type: ignore[assignment, unused-ignore]
    records = []
    for raw in raws:
        if raw:
            try:
                records.append(WorkerRecord.model_validate_json(raw))
            except ValueError:  # another version's record: not ours to use
                continue
    return records


def models_online(conn: redis.Redis) -> dict[str, list[WorkerRecord]]:
    """Model name -> the workers holding it, for every model some worker online holds."""
    return models_online_from(online_workers(conn))


@dataclass(frozen=True)
class ModelWorkers:
    """The workers online holding a model, or how long it has had none.

    ``state``: ``online``; ``coming`` when none holds it now but one held it within the patience given (a
    worker restarting) or none ever did (a fresh start, the worker still loading): its jobs wait for it;
    ``gone`` when its last worker left longer ago than that: a job would wait for nobody.
    """

    records: list[WorkerRecord]
    gone_s: float | None  #: seconds since a worker last held it; None while one does, or if none ever did
    state: Literal["online", "coming", "gone"]


def model_workers(conn: redis.Redis, model: str, *, gone_refuse_s: float) -> ModelWorkers:
    """Who holds ``model`` now, else how long since a worker did (:data:`keys.MODELS_LAST_HELD`)."""
    records = models_online(conn).get(model, [])
    if records:
        return ModelWorkers(records, None, "online")
    raw: bytes | None = conn.hget(keys.MODELS_LAST_HELD, model)  # type: ignore[assignment, unused-ignore]
    gone_s = max(0.0, time.time() - float(raw)) if raw else None
    return ModelWorkers([], gone_s, "gone" if gone_s is not None and gone_s > gone_refuse_s else "coming")


def models_online_from(records: list[WorkerRecord]) -> dict[str, list[WorkerRecord]]:
    held: dict[str, list[WorkerRecord]] = {}
    for record in records:
        for model in record.models:
            held.setdefault(model, []).append(record)
    return held


def usable(records: list[WorkerRecord], kind: str) -> dict[str, str | None]:
    """LoRA (``kind="loras"``) or embedding names the workers know -> None if usable, else the problem."""
    found: dict[str, str | None] = {}
    for record in records:
        for item in getattr(record, kind):
            if found.get(item.name, "missing") is not None:
                found[item.name] = item.problem
    return found


def check_networks(records: list[WorkerRecord], request: GenerationRequest, max_loras: int
                   ) -> tuple[list[LoraRef], list[str]]:
    """The request's LoRAs, checked against what the workers holding its model can use, and the
    embeddings its prompts name; InvalidRequestError naming the LoRA that cannot be used."""
    loras = parse_loras(request.prompt)
    check_lora_count(loras, max_loras)
    known = usable(records, "loras")
    for lora in loras:
        if lora.name not in known:
            raise InvalidRequestError("prompt", N_("unknown LoRA {name}: the workers holding {model} have no "
                                                   "{name}.safetensors (see /loras)"), name=lora.name,
                                      model=request.model)
        if known[lora.name] is not None:  # the worker's own words: what is wrong with the file
            raise InvalidRequestError("prompt", N_("LoRA {name} cannot be used: {problem}"), name=lora.name,
                                      problem=known[lora.name])
    embeddings = [name for name, problem in usable(records, "embeddings").items() if problem is None]
    return loras, find_embeddings([request.prompt, request.negative_prompt], embeddings)
