"""``/style``: a server's named styles (prompt template with ``{prompt}`` + negative prompt), as A1111's."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import discord
from discord import app_commands
from discord.ext import commands

from bot.features.policy import can_manage_server
from bot.i18n import MemberError, t
from bot.jobs import read_redis
from ponybot.styles import Style, StyleStore

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

log = logging.getLogger(__name__)


def describe_style(style: Style) -> str:
    negative = f" · −`{style.negative_prompt}`" if style.negative_prompt else ""
    return f"**{style.name}**: `{style.prompt or '{prompt}'}`{negative}"


class Styles(commands.GroupCog, group_name="style", group_description="This server's saved styles"):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        super().__init__()

    @property
    def store(self) -> StyleStore:
        return StyleStore(self.bot.sync_redis)

    @app_commands.command(name="add", description="Save a style for this server (Manage Server)")
    @app_commands.describe(name="The style's name", prompt="Prompt template: {prompt} is where the member's goes",
                           negative_prompt="Added to the negative prompt")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @can_manage_server()
    async def add(self, interaction: discord.Interaction[PonyBot], name: app_commands.Range[str, 1, 50],
                  prompt: app_commands.Range[str, 1, 1000], negative_prompt: app_commands.Range[str, 0, 1000] = ""
                  ) -> None:
        assert interaction.guild_id is not None
        try:
            style = Style(name=name, prompt=prompt, negative_prompt=negative_prompt)
            await read_redis(self.store.put, interaction.guild_id, [style])
        except ValueError:
            raise MemberError("a style name is 1-50 letters, digits, spaces or . ' + - _, and a server keeps at "
                              "most 100 styles", field="name") from None
        log.info("style %r saved in guild %s by %s", style.name, interaction.guild_id, interaction.user.id)
        await interaction.response.send_message(
            t(interaction.locale, "Style saved: {style}", style=describe_style(style)), ephemeral=True)

    @app_commands.command(name="remove", description="Delete one of this server's styles (Manage Server)")
    @app_commands.describe(name="The style to delete")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @can_manage_server()
    async def remove(self, interaction: discord.Interaction[PonyBot], name: app_commands.Range[str, 1, 50]) -> None:
        assert interaction.guild_id is not None
        if not await read_redis(self.store.remove, interaction.guild_id, name):
            raise MemberError("this server has no style called {name} (see /style list)", field="name", name=name)
        await interaction.response.send_message(t(interaction.locale, "Style {name} deleted.", name=name),
                                                ephemeral=True)

    @app_commands.command(name="list", description="This server's styles")
    @app_commands.guild_only()
    async def list(self, interaction: discord.Interaction[PonyBot]) -> None:
        assert interaction.guild_id is not None
        styles = await read_redis(self.store.all, interaction.guild_id)
        text = "\n".join(describe_style(style) for style in styles) or t(
            interaction.locale, "This server has no styles yet. Moderators add them with /style add.")
        embed = discord.Embed(title=t(interaction.locale, "Styles"), description=text[:4000], colour=0xE39BD9)
        await interaction.response.send_message(embed=embed, ephemeral=True)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Styles(bot))
