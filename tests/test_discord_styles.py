"""Server styles end to end: imported from an A1111 styles.csv, managed with /style, used by /generate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import redis

from ponybot.parameters import parse_parameters
from ponybot.queue import generation_queue
from ponybot.settings import Settings
from ponybot.styles import StyleStore, apply_style, parse_styles_csv
from tests.bot_harness import drain, ephemeral_reply, running_bot
from tests.conftest import cli_env, run_cli
from tests.discord_fake.server import MANAGE_GUILD, MEMBER_PERMISSIONS, MODERATOR, FakeDiscord
from worker.png import read_parameters

STYLES_CSV = '''name,prompt,negative_prompt
None,,
Watercolor,"watercolor painting of {prompt}, soft edges","photo, 3d"
Cinematic,"cinematic lighting, film grain",
'''


def test_styles_merge_as_a1111() -> None:
    styles = {style.name: style for style in parse_styles_csv(STYLES_CSV)}
    assert list(styles) == ["Watercolor", "Cinematic"]  # A1111's "None" placeholder is skipped
    assert apply_style(styles["Watercolor"], "pinkie pie", "blurry") == (
        "watercolor painting of pinkie pie, soft edges", "blurry, photo, 3d")
    assert apply_style(styles["Cinematic"], "pinkie pie", "") == ("pinkie pie, cinematic lighting, film grain", "")


def test_import_cli(tmp_path: Path, model_cache: Path, redis_url: str, conn: redis.Redis) -> None:
    (tmp_path / "styles.csv").write_text(STYLES_CSV)
    result = run_cli(["styles", "import", "styles.csv", "--guild", "42"], cli_env(redis_url, model_cache), tmp_path)
    assert result.returncode == 0, result.stderr
    assert [style.name for style in StyleStore(conn).all(42)] == ["Cinematic", "Watercolor"]
    (tmp_path / "bad.csv").write_text("title,text\nx,y\n")
    bad = run_cli(["styles", "import", "bad.csv", "--guild", "42"], cli_env(redis_url, model_cache), tmp_path)
    assert bad.returncode == 2 and "not an A1111 styles file" in bad.stderr


def result_message(fake: FakeDiscord) -> dict[str, Any] | None:
    return next((m for m in fake.messages.values() if m["attachments"]), None)


async def test_styles_applied_and_refused_by_policy(fake: FakeDiscord, discord_settings: Settings, redis_url: str,
                                                    runtime: Any, conn: redis.Redis) -> None:
    StyleStore(conn).put(fake.guild_id, parse_styles_csv(STYLES_CSV))
    moderator = MEMBER_PERMISSIONS | MANAGE_GUILD
    async with running_bot(discord_settings, redis_url):
        denied = await fake.slash("style", {"name": "x", "prompt": "{prompt}"}, subcommand="add")
        denied_reply = await fake.wait_for(lambda: ephemeral_reply(fake, denied))
        added = await fake.slash("style", {"name": "Spicy", "prompt": "{prompt}, nude"}, subcommand="add",
                                 user=MODERATOR, permissions=moderator)
        await fake.wait_for(lambda: ephemeral_reply(fake, added))
        listed = await fake.slash("style", subcommand="list")
        await fake.wait_for(lambda: listed.responded)
        typing = await fake.autocomplete("generate", {"prompt": "pinkie pie", "style": "c"}, "style")
        offered = await fake.wait_for(lambda: fake.choices(typing))
        refused = await fake.slash("generate", {"prompt": "pinkie pie", "style": "Spicy"})
        refused_reply = await fake.wait_for(lambda: ephemeral_reply(fake, refused))
        unknown = await fake.slash("generate", {"prompt": "pinkie pie", "style": "Nope"})
        unknown_reply = await fake.wait_for(lambda: ephemeral_reply(fake, unknown))
        styled = await fake.slash("generate", {"prompt": "pinkie pie", "style": "watercolor", "seed": 3})
        await fake.wait_for(lambda: "Queued" in (fake.original(styled) or {}).get("content", ""))
        await drain(runtime)
        message = await fake.wait_for(lambda: result_message(fake))
        removed = await fake.slash("style", {"name": "spicy"}, subcommand="remove", user=MODERATOR,
                                   permissions=moderator)
        await fake.wait_for(lambda: ephemeral_reply(fake, removed))
    assert "Manage Server" in denied_reply
    assert [choice["value"] for choice in offered] == ["Cinematic", "Spicy", "Watercolor"]  # names holding "c"
    embed = fake.original(listed)["embeds"][0]  # type: ignore[index]
    assert "**Spicy**" in embed["description"] and "**Watercolor**" in embed["description"]
    assert "Not queued" in refused_reply and "nude" in refused_reply  # the style's words meet the channel's terms
    assert "**style**: this server has no style called Nope" in unknown_reply
    parameters = parse_parameters(read_parameters(fake.attachment_bytes(message)[0]) or "")
    assert "watercolor painting of pinkie pie, soft edges" in parameters["prompt"]
    assert parameters["negative_prompt"].startswith("photo, 3d")
    assert StyleStore(conn).get(fake.guild_id, "Spicy") is None
    assert generation_queue(conn).count == 0
