"""Everything a member reads is in their language: refusals, permissions and job failures, in German and French.

Each row drives the real bot through the Discord fake three times (``en-US``, ``de``, ``fr``) and reads
every text the bot sent (content, embeds, button labels). A German or French text passes only when each
of its words is a word of that language's catalog, of what the member typed, or a name (a model, a LoRA):
an English sentence left halfway ("Nicht eingereiht: the prompt contains ...") or a class name
("AbandonedJobError") fails. It must also differ from what an English-speaking member got.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pytest
import redis
from babel.messages.pofile import read_po

from bot.i18n import LANGUAGES, catalog_path
from ponybot import keys
from ponybot.errors import N_, reason
from ponybot.policy import PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.queue import enqueue, generation_queue, publish_event
from ponybot.schemas import Job, JobEvent, Origin, build_request
from ponybot.settings import Settings
from tests.bot_harness import bot_settings, running_bot
from tests.conftest import announce
from tests.discord_fake.server import MANAGE_CHANNELS, MEMBER, MEMBER_PERMISSIONS, FakeDiscord

LOCALES = ("en-US", *LANGUAGES)
WORD = re.compile(r"[^\W\d_]{3,}")
#: Words that are the same in every language: Discord markdown, units, the model's own names.
NEUTRAL = {"pony", "tiny", "sfw", "nsfw", "lora", "loras", "png", "jpeg", "webp", "cfg", "gpu", "http", "https"}
MOD = MEMBER_PERMISSIONS | MANAGE_CHANNELS


@cache
def vocabulary(language: str) -> frozenset[str]:
    """Every word of the language's catalog (its translations only, not the English ids)."""
    with catalog_path(language).open("rb") as source:
        catalog = read_po(source, locale=language)
    return frozenset(word.casefold() for message in catalog if message.id for word in WORD.findall(str(message.string)))


def texts_of(body: Any) -> Iterator[str]:
    """What a member sees in a message the bot sent: its content, embeds and components' labels."""
    if not isinstance(body, dict):
        return
    if isinstance(body.get("data"), dict):  # an interaction callback
        yield from texts_of(body["data"])
    if body.get("content"):
        yield str(body["content"])
    for embed in body.get("embeds") or []:
        yield from (str(embed[key]) for key in ("title", "description") if embed.get(key))
        for item in embed.get("fields") or []:
            yield from (str(item[key]) for key in ("name", "value") if item.get(key))
    for row in body.get("components") or []:
        for component in row.get("components") or []:
            yield from (str(component[key]) for key in ("label", "placeholder") if component.get(key))


def foreign_words(text: str, language: str, typed: set[str]) -> list[str]:
    allowed = vocabulary(language) | typed | NEUTRAL
    return [word for word in WORD.findall(re.sub(r"https?://\S+|<[@#!&:\w]+>|`[^`]*`|#[\w-]+", " ", text))
            if word.casefold() not in allowed]


@dataclass(frozen=True)
class Ctx:
    fake: FakeDiscord
    conn: redis.Redis
    settings: Settings
    locale: str


@dataclass(frozen=True)
class Row:
    """A path to a member-visible text: the channel's rules, then what the member does."""

    rules: PolicyRules = field(default_factory=PolicyRules)
    command: tuple[str, dict[str, Any], str | None] | None = None  #: (name, options, subcommand)
    permissions: int = MEMBER_PERMISSIONS
    prepare: Callable[[Ctx], None] | None = None
    event: Callable[[Ctx], JobEvent] | None = None  #: a finished job's event the delivery loop posts
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    names: tuple[str, ...] = ()  #: names the text may carry as they are (a term, a model)


def full_queue(ctx: Ctx) -> None:
    if generation_queue(ctx.conn).count:
        return
    waiting = Job.create(build_request(ctx.settings.limits, prompt="first", steps=4, width=256, height=256))
    enqueue(ctx.conn, waiting, max_queue=1, result_ttl_s=60)


def cooling_down(ctx: Ctx) -> None:
    ctx.conn.set(keys.cooldown(ctx.fake.guild_id, ctx.fake.default_channel, int(MEMBER["id"])), 1, ex=60)


def failed(code: str, message: str, attempts: int = 0, **extra: Any) -> Callable[[Ctx], JobEvent]:
    def make(ctx: Ctx) -> JobEvent:
        origin = Origin(guild_id=ctx.fake.guild_id, channel_id=ctx.fake.default_channel, channel_nsfw=False,
                        user_id=int(MEMBER["id"]), locale=ctx.locale)
        job = Job.create(build_request(ctx.settings.limits, prompt="pony", steps=4, width=256, height=256),
                         origin=origin)
        return JobEvent(kind="failed", job=job, error_code=code, error_message=message, attempts=attempts, **extra)

    return make


def generate(**options: Any) -> tuple[str, dict[str, Any], str | None]:
    return "generate", {"prompt": "pony", **options}, None


ROWS = {
    "policy term": Row(PolicyRules(forbidden_terms=["spider"]), generate(prompt="spider pony"), names=("spider",)),
    "steps cap": Row(PolicyRules(max_steps=5), generate(steps=9)),
    "count cap": Row(PolicyRules(max_count=1), generate(count=2)),
    "size cap": Row(PolicyRules(max_pixels=256 * 256), generate(size="512x512")),
    "size malformed": Row(command=generate(size="huge")),
    "size off the grid": Row(command=generate(size="500x500")),
    "models allowed": Row(PolicyRules(models=["elsewhere"]), generate(), names=("elsewhere",)),
    "loras allowed": Row(PolicyRules(loras=["glow"]), generate(prompt="pony <lora:shine:1>"),
                         names=("glow", "shine")),
    "cooldown": Row(PolicyRules(cooldown_s=60), generate(), prepare=cooling_down),
    "full queue": Row(command=generate(), prepare=full_queue, settings={"limits": {"max_queue": 1}}),
    "unknown model": Row(command=generate(model="nowhere"), names=("nowhere",)),
    "policy test refusal": Row(PolicyRules(forbidden_terms=["spider"]), ("policy", {"prompt": "spider"}, "test"),
                               permissions=MOD, names=("spider",)),
    "manage channels missing": Row(command=("policy", {"mode": "nsfw"}, "set")),
    "manage server missing": Row(command=("policy", {"mode": "nsfw"}, "default"), permissions=MOD),
    "policy caps shown": Row(PolicyRules(max_steps=5, max_count=1, max_pixels=256 * 256),
                             ("policy", {}, "show")),
    "gallery off": Row(command=("gallery", {}, "open")),
    "worker died": Row(event=failed("worker_died", "AbandonedJobError:  (after 2 attempt(s))", 2)),
    "timeout": Row(event=failed("timeout", "it ran past its time limit of 1 s (worker.step_budget_s = 0.001 s per "
                                "512x512 step) (after 2 attempt(s))", 2)),
    "out of memory": Row(event=failed("out_of_memory", "the GPU ran out of memory: try a smaller size or count")),
    "worker error": Row(event=failed("internal", "RuntimeError: CUDA error: device-side assert triggered", 1)),
    "lora failed": Row(event=failed("lora", "LoRA glow: there is no glow.safetensors in this worker's LoRA folder")),
    "unknown failure": Row(event=failed("mystery", "KeyError: 'sampler'")),
    "policy changed": Row(event=failed("policy", "the prompt contains a term this channel does not allow: “spider”",
                                       reason=reason(N_("the prompt contains a term this channel does not allow: "
                                                        "“{term}”"), term="spider")), names=("spider",)),
}


async def sent_texts(ctx: Ctx, row: Row) -> list[str]:
    """Do the row's action as a member in ``ctx.locale``; every text the bot sent for it."""
    fake = ctx.fake
    start = len(fake.requests)
    done: Callable[[], Any]
    if row.event is not None:
        before = len(fake.channel_messages(fake.default_channel))
        publish_event(ctx.conn, row.event(ctx))
        done = lambda: len(fake.channel_messages(fake.default_channel)) > before  # noqa: E731
    else:
        assert row.command is not None
        name, options, subcommand = row.command
        interaction = await fake.slash(name, options, subcommand=subcommand, permissions=row.permissions,
                                       locale=ctx.locale)
        done = lambda: any(message["_interaction_token"] == interaction.token and message["flags"] & 64  # noqa: E731
                           and (message["content"] or message["embeds"]) for message in fake.messages.values())
    await fake.wait_for(done)
    return [text for request in fake.requests[start:] if request.method in ("POST", "PATCH")
            for text in texts_of(request.body)]


@pytest.mark.parametrize("row", ROWS.values(), ids=ROWS.keys())
async def test_member_reads_every_text_in_their_language(fake: FakeDiscord, settings: Settings, redis_url: str,
                                                         conn: redis.Redis, row: Row) -> None:
    sections = {name: getattr(settings, name).model_copy(update=values) for name, values in row.settings.items()}
    chosen = bot_settings(settings.model_copy(update=sections), fake)
    announce(conn, [chosen.default_model])
    PolicyStore(conn).set_channel(fake.guild_id, fake.default_channel, row.rules, by=1)
    with contextlib.suppress(redis.ResponseError):  # the delivery loop's group, before any event is published
        conn.xgroup_create(keys.EVENTS_STREAM, keys.DELIVERY_GROUP, id="$", mkstream=True)
    typed = {word.casefold() for value in [*row.names, *chosen.models, *(row.command[1].values() if row.command
                                                                          else [])]
             for word in WORD.findall(str(value))}
    sent: dict[str, list[str]] = {}
    async with running_bot(chosen, redis_url):
        for locale in LOCALES:
            ctx = Ctx(fake, conn, chosen, locale)
            if row.prepare is not None:
                row.prepare(ctx)
            sent[locale] = await sent_texts(ctx, row)
    assert sent["en-US"], "the English member was told nothing"
    for language in LANGUAGES:
        assert sent[language], f"{language}: nothing sent"
        english_left = {text: words for text in sent[language] if (words := foreign_words(text, language, typed))}
        assert not english_left, f"{language}: words from no {language} catalog message: {english_left}"
        same = [text for text in sent[language] if text in sent["en-US"] and WORD.search(text)]
        assert not same, f"{language}: sent as to an English-speaking member: {same}"
