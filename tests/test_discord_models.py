"""Models, LoRAs and channel rules through the real client and the Discord on loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from ponybot import keys
from ponybot.policy import PolicyRules
from ponybot.policy_store import PolicyStore
from ponybot.queue import generation_queue, load_job
from ponybot.settings import load_settings
from ponybot.workers import NetworkInfo
from tests.bot_harness import bot_settings, drain, ephemeral_reply, running_bot
from tests.conftest import announce
from tests.discord_fake.server import MANAGE_CHANNELS, MEMBER_PERMISSIONS, MODERATOR, FakeDiscord
from worker.runtime import WorkerRuntime

MOD = MEMBER_PERMISSIONS | MANAGE_CHANNELS
LORAS = [NetworkInfo(name="shiny"), NetworkInfo(name="glow"), NetworkInfo(name="nude_style"),
         NetworkInfo(name="broken", problem="corrupt or truncated .safetensors file")]


def two_models(redis_url: str, model_cache: Path, fake: FakeDiscord) -> Any:
    return bot_settings(load_settings(
        None, redis={"url": redis_url}, model={"cache_dir": model_cache},
        models={"pony-v4": {"source": "tiny"}, "pony-v3": {"source": "tiny", "description": "older"}},
        defaults={"size": "256x256", "steps": 2}), fake)


def embed(fake: FakeDiscord, interaction: Any) -> str:
    message = fake.original(interaction) or {}
    return str(message["embeds"][0]["description"]) if message.get("embeds") else str(message.get("content"))


async def test_loras_checked_before_queueing(fake: FakeDiscord, redis_url: str, model_cache: Path,
                                             conn: redis.Redis) -> None:
    settings = two_models(redis_url, model_cache, fake)
    announce(conn, ["pony-v4", "pony-v3"], loras=LORAS)
    async with running_bot(settings, redis_url):
        replies = {}
        for prompt in ("pony <lora:ghost:0.5>", "pony <lora:broken>", "pony <lora:shiny:3>",
                       "pony <lora:shiny> <lora:glow> <lora:a> <lora:b> <lora:c>", "pony <lora:nude_style:0.7>"):
            interaction = await fake.slash("generate", {"prompt": prompt})
            replies[prompt] = await fake.wait_for(lambda interaction=interaction: ephemeral_reply(fake, interaction))
        french = {}
        for prompt in ("pony <lora:ghost:0.5>", "pony <lora:broken>", "pony <lora:shiny:3>"):
            interaction = await fake.slash("generate", {"prompt": prompt}, locale="fr")
            french[prompt] = await fake.wait_for(lambda interaction=interaction: ephemeral_reply(fake, interaction))
        listed = await fake.slash("loras")
        await fake.wait_for(lambda: fake.original(listed))
    assert french["pony <lora:ghost:0.5>"] == ("**prompt**: LoRA inconnu ghost : les workers qui ont pony-v4 n’ont pas "
                                               "de ghost.safetensors (voir /loras)")
    assert french["pony <lora:broken>"].startswith("**prompt**: Le LoRA broken ne peut pas être utilisé : corrupt")
    assert "le poids du LoRA shiny doit être entre -2 et 2, reçu 3" in french["pony <lora:shiny:3>"]
    assert "unknown LoRA ghost" in replies["pony <lora:ghost:0.5>"]
    assert "LoRA broken cannot be used: corrupt" in replies["pony <lora:broken>"]
    assert "shiny weight must be from -2 to 2" in replies["pony <lora:shiny:3>"]
    assert "at most 4 LoRAs" in replies["pony <lora:shiny> <lora:glow> <lora:a> <lora:b> <lora:c>"]
    assert "Not queued" in replies["pony <lora:nude_style:0.7>"] and "nude" in replies["pony <lora:nude_style:0.7>"]
    assert generation_queue(conn).count == 0
    text = embed(fake, listed)
    assert "**pony-v4**" in text and "`shiny`" in text and "`glow`" in text and "broken" not in text


async def test_channel_limited_to_models_and_loras(fake: FakeDiscord, redis_url: str, model_cache: Path,
                                                   conn: redis.Redis) -> None:
    settings = two_models(redis_url, model_cache, fake)
    announce(conn, ["pony-v4", "pony-v3"], loras=LORAS)
    async with running_bot(settings, redis_url):
        typo = await fake.slash("policy", {"models": "pony-v9"}, subcommand="set", user=MODERATOR, permissions=MOD)
        typo_reply = await fake.wait_for(lambda: ephemeral_reply(fake, typo))
        changed = await fake.slash("policy", {"models": "pony-v4", "loras": "shiny"}, subcommand="set",
                                   user=MODERATOR, permissions=MOD)
        await fake.wait_for(lambda: fake.original(changed))
        other_model = await fake.slash("generate", {"prompt": "pony", "model": "pony-v3"})
        other_reply = await fake.wait_for(lambda: ephemeral_reply(fake, other_model))
        other_lora = await fake.slash("generate", {"prompt": "pony <lora:glow:0.5>"})
        lora_reply = await fake.wait_for(lambda: ephemeral_reply(fake, other_lora))
        listed = await fake.slash("loras")
        await fake.wait_for(lambda: fake.original(listed))
        allowed = await fake.slash("generate", {"prompt": "pony <lora:shiny:0.5>"})
        await fake.wait_for(lambda: "Queued" in (fake.original(allowed) or {}).get("content", ""))
    assert "pony-v9" in typo_reply
    assert PolicyStore(conn).channel_rules(fake.guild_id, fake.default_channel) == PolicyRules(
        models=["pony-v4"], loras=["shiny"])
    assert "allows only the models pony-v4" in other_reply and "pony-v3" in other_reply
    assert "does not allow the LoRA glow" in lora_reply
    text = embed(fake, listed)
    assert "`shiny`" in text and "glow" not in text and "pony-v3" not in text
    queued = load_job(conn, generation_queue(conn).job_ids[0])
    assert queued is not None and queued.loras[0].name == "shiny" and queued.request.model == "pony-v4"


async def test_buttons_keep_the_model(fake: FakeDiscord, redis_url: str, model_cache: Path, conn: redis.Redis,
                                      generator: Any, classifier: Any) -> None:
    settings = two_models(redis_url, model_cache, fake)
    runtime = WorkerRuntime(settings, conn, {"pony-v3": generator}, "holds-v3", classifier)  # tiny, named pony-v3
    announce(conn, ["pony-v3"])
    async with running_bot(settings, redis_url):
        interaction = await fake.slash("generate", {"prompt": "pinkie pie", "model": "pony-v3", "seed": 5})
        await fake.wait_for(lambda: "Queued" in (fake.original(interaction) or {}).get("content", ""))
        assert generation_queue(conn, "pony-v3").count == 1 and generation_queue(conn).count == 0
        await drain(runtime)
        result = await fake.wait_for(lambda: next((m for m in fake.messages.values() if m["attachments"]), None))
        ids = {b["label"]: b["custom_id"] for row in result["components"] for b in row["components"]}
        reroll = await fake.click(int(result["id"]), ids["Re-roll"])
        await fake.wait_for(lambda: "Queued" in (fake.original(reroll) or {}).get("content", ""))
    rerolled = load_job(conn, generation_queue(conn, "pony-v3").job_ids[0])
    assert rerolled is not None and rerolled.request.model == "pony-v3" and rerolled.request.prompt == "pinkie pie"
    assert conn.exists(keys.job_record(rerolled.id))
