"""``/gallery``: moderators turn the community gallery on or off; members get its links or leave it.

The bot hands every result it posts to the gallery through :data:`ponybot.keys.GALLERY_STREAM`
(after Discord accepted the message; a failure here is logged and never holds up delivery).
Each PNG is copied server-side to a gallery-owned key that lives ``gallery.handoff_ttl_s``,
so the gallery can be down that long and still store every image.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

import discord
import redis.asyncio as aioredis
from discord import app_commands
from discord.ext import commands
from redis.exceptions import RedisError

from bot.features.policy import can_manage_server
from bot.i18n import MemberError, t, tp
from ponybot import keys
from ponybot.gallery_messages import GalleryControl, GalleryImage, GalleryMessage, GalleryPost
from ponybot.policy_store import PolicyStore
from ponybot.schemas import JobEvent

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

log = logging.getLogger(__name__)
#: Entries kept in the stream at most (approximately); a gallery that far behind has lost the oldest.
STREAM_MAXLEN = 100_000


async def gallery_on(bot: PonyBot, guild_id: int | None, channel_id: int) -> bool:
    """Whether images made in this channel go to the gallery: on for the bot, the server and the channel."""
    if not bot.settings.gallery.enabled or guild_id is None:
        return False
    if not await bot.redis.sismember(keys.GALLERY_GUILDS, str(guild_id)):
        return False
    rules = await asyncio.to_thread(PolicyStore(bot.sync_redis).rules_for, guild_id, channel_id)
    return rules.gallery is not False


def gallery_link(bot: PonyBot, path: str) -> str:
    return bot.settings.gallery.public_url.rstrip("/") + path


def post_for(event: JobEvent) -> GalleryPost | None:
    """What the gallery keeps of a delivered result: the posted images, with the effective mode."""
    posted = [image for image in event.images if not image.withheld and image.key is not None]
    if event.kind != "done" or not posted:
        return None
    origin = event.job.origin
    # a worker that did not say its mode: SFW only where Discord allows nothing else
    mode = event.mode or ("nsfw" if origin is None or origin.channel_nsfw else "sfw")
    return GalleryPost(job=event.job, mode=mode, prompt=event.prompt, negative_prompt=event.negative_prompt,
                       images=[GalleryImage(index=image.index, seed=image.seed, key=keys.gallery_image(event.job.id,
                                                                                                       image.index),
                                            width=image.width, height=image.height, flagged=image.flagged)
                               for image in posted])


async def publish(conn: aioredis.Redis, item: GalleryPost | GalleryControl, copies: dict[str, str],
                  ttl_s: int) -> None:
    """Copy the PNGs and append the entry in one transaction: the gallery sees both or neither."""
    async with conn.pipeline(transaction=True) as pipe:
        for source, target in copies.items():
            pipe.copy(source, target, replace=True)
            pipe.expire(target, ttl_s)
        pipe.xadd(keys.GALLERY_STREAM, {"data": GalleryMessage(item=item).model_dump_json()}, maxlen=STREAM_MAXLEN,
                  approximate=True)
        await pipe.execute()


async def hand_over(bot: PonyBot, event: JobEvent) -> None:
    """After delivery: give the result to the gallery when its channel has it on (never raises)."""
    origin = event.job.origin
    try:
        if origin is None or not await gallery_on(bot, origin.guild_id, origin.channel_id):
            return
        post = post_for(event)
        if post is None:
            return
        copies = {keys.image(event.job.id, image.index): image.key for image in post.images}
        await publish(bot.redis, post, copies, bot.settings.gallery.handoff_ttl_s)
        log.info("job=%s handed to the gallery (%d image(s))", event.job.id, len(post.images))
    except (RedisError, OSError) as error:
        log.error("job=%s not handed to the gallery: %s", event.job.id, error)


async def send_control(bot: PonyBot, control: GalleryControl) -> None:
    if bot.settings.gallery.enabled:
        await publish(bot.redis, control, {}, bot.settings.gallery.handoff_ttl_s)


async def forget_job(bot: PonyBot, job_id: str) -> None:
    """The result's Delete button: the gallery removes it too."""
    try:
        await send_control(bot, GalleryControl(kind="delete_job", job_id=job_id))
    except (RedisError, OSError) as error:
        log.error("job=%s deletion not sent to the gallery: %s", job_id, error)


def gallery_button(url: str, locale: str | discord.Locale | None) -> discord.ui.Button[discord.ui.View]:
    return discord.ui.Button(label=tp(locale, "button", "Gallery"), style=discord.ButtonStyle.link, url=url,
                             emoji="🖼️")


async def set_enabled(bot: PonyBot, guild_id: int, enabled: bool) -> None:
    if enabled:
        await bot.redis.sadd(keys.GALLERY_GUILDS, str(guild_id))
    else:
        await bot.redis.srem(keys.GALLERY_GUILDS, str(guild_id))
    await send_control(bot, GalleryControl(kind="guild", guild_id=guild_id, enabled=enabled))


class Gallery(commands.GroupCog, group_name="gallery", group_description="The community gallery of this bot"):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        super().__init__()

    def require_gallery(self) -> None:
        if not self.bot.settings.gallery.enabled:
            raise MemberError("This bot has no gallery (its operator has not turned it on).")

    @app_commands.command(name="open", description="Links to this server's gallery and your own page")
    @app_commands.guild_only()
    async def open(self, interaction: discord.Interaction[PonyBot]) -> None:
        self.require_gallery()
        assert interaction.guild_id is not None
        if not await self.bot.redis.sismember(keys.GALLERY_GUILDS, str(interaction.guild_id)):
            raise MemberError("The gallery is off in this server; moderators can turn it on with /gallery enable.")
        server = gallery_link(self.bot, f"/g/{interaction.guild_id}")
        mine = gallery_link(self.bot, f"/u/{interaction.user.id}")
        locale = interaction.locale
        view = discord.ui.View()
        view.add_item(discord.ui.Button(label=tp(locale, "button", "This server"), style=discord.ButtonStyle.link,
                                        url=server))
        view.add_item(discord.ui.Button(label=tp(locale, "button", "My images"), style=discord.ButtonStyle.link,
                                        url=mine))
        await interaction.response.send_message(t(locale, "This server's gallery: {server}\nYour images: {mine}",
                                                  server=server, mine=mine), view=view, ephemeral=True)

    @app_commands.command(name="enable", description="Keep this server's images in the gallery (Manage Server)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @can_manage_server()
    async def enable(self, interaction: discord.Interaction[PonyBot]) -> None:
        await self.switch(interaction, True)

    @app_commands.command(name="disable", description="Take this server's images out of the gallery (Manage Server)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @can_manage_server()
    async def disable(self, interaction: discord.Interaction[PonyBot]) -> None:
        await self.switch(interaction, False)

    async def switch(self, interaction: discord.Interaction[PonyBot], enabled: bool) -> None:
        self.require_gallery()
        assert interaction.guild_id is not None
        await set_enabled(self.bot, interaction.guild_id, enabled)
        log.info("gallery %s in server %s by %s", "enabled" if enabled else "disabled", interaction.guild_id,
                 interaction.user.id)
        text = (t(interaction.locale, "The gallery is on: images posted here from now on appear in it ({link}). "
                  "A channel can opt out with `/policy set gallery: off`.",
                  link=gallery_link(self.bot, f"/g/{interaction.guild_id}")) if enabled
                else t(interaction.locale, "The gallery is off: this server's images no longer appear in it."))
        await interaction.response.send_message(text, ephemeral=True)

    @app_commands.command(name="forget-me", description="Remove every image of yours from the gallery")
    async def forget_me(self, interaction: discord.Interaction[PonyBot]) -> None:
        self.require_gallery()
        await send_control(self.bot, GalleryControl(kind="forget_member", user_id=interaction.user.id))
        log.info("member %s asked the gallery to forget them", interaction.user.id)
        await interaction.response.send_message(t(
            interaction.locale,
            "Done: every image of yours is being removed from the gallery, with your likes, reports and settings."),
            ephemeral=True)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Gallery(bot))
