"""Turning errors into messages a member can act on, and answering ephemerally."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

import discord
from discord import app_commands

from bot import messages
from bot.i18n import MemberError, permission_name, t
from ponybot.errors import InvalidRequestError, PolicyRefusal, PonybotError, QueueFullError, RedisUnavailableError

log = logging.getLogger(__name__)


def unwrap(error: BaseException) -> BaseException:
    """The exception a command really raised, under discord.py's wrappers."""
    while isinstance(error, (app_commands.CommandInvokeError, app_commands.TransformerError)):
        inner = error.original if isinstance(error, app_commands.CommandInvokeError) else error.__cause__
        if inner is None:
            break
        error = inner
    return error


def describe_error(error: BaseException, locale: str | discord.Locale | None = None) -> str | None:
    """A member-facing message for an expected error (in the member's language), or None for a bug."""
    if isinstance(error, MemberError):
        return error.render(locale)
    if isinstance(error, InvalidRequestError):
        return f"**{error.field}**: {t(locale, error.template, **error.params)}"
    if isinstance(error, RedisUnavailableError):
        return t(locale, messages.REDIS_DOWN)
    if isinstance(error, QueueFullError):
        return t(locale, error.template, **error.params)
    if isinstance(error, (PolicyRefusal, PonybotError)):
        return str(error)
    if isinstance(error, app_commands.MissingPermissions):
        names = [permission_name(locale, flag) for flag in error.missing_permissions]
        return t(locale, "You need the {permissions} permission to do this.", permissions=", ".join(names))
    if isinstance(error, app_commands.CheckFailure):
        return str(error) or t(locale, messages.NOT_ALLOWED)
    return None


async def reply_ephemeral(interaction: discord.Interaction[Any], text: str) -> None:
    """Answer ephemerally whether or not the interaction was already deferred (publicly)."""
    try:
        if interaction.response.is_done():
            with contextlib.suppress(discord.HTTPException):
                await interaction.delete_original_response()
            await interaction.followup.send(text, ephemeral=True)
        else:
            await interaction.response.send_message(text, ephemeral=True)
    except discord.HTTPException as failure:
        log.warning("could not tell the member %r: %s", text, failure)


async def guarded(interaction: discord.Interaction[Any], action: Awaitable[None]) -> None:
    """Run a button's action; an expected error becomes an ephemeral message (buttons bypass the tree)."""
    try:
        await action
    except Exception as error:  # the member must hear back whatever went wrong
        text = describe_error(unwrap(error), interaction.locale)
        if text is None:
            log.error("button action failed", exc_info=error)
            text = t(interaction.locale, messages.SOMETHING_WRONG)
        await reply_ephemeral(interaction, text)


def is_moderator(interaction: discord.Interaction[Any]) -> bool:
    """Manage Messages in this channel: may delete or cancel other members' jobs."""
    return bool(interaction.permissions.manage_messages)
