"""``/policy``: moderators decide per channel what may be generated.

Manage Channels is needed for a channel's rules and Manage Server for the server's
default, checked when the command runs: server admins can change who sees a
command, so ``default_permissions`` alone is no guard.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import discord
from discord import app_commands
from discord.ext import commands

from bot import needs
from bot.features.generate import SizeTransformer
from bot.i18n import N_, t, t_reason
from bot.jobs import origin_of
from bot.messages import missing_in_channel
from ponybot.errors import InvalidRequestError
from ponybot.options import make_request
from ponybot.policy import AuditEntry, EffectivePolicy, FlaggedAction, Mode, PolicyRules, Strictness, apply, resolve
from ponybot.policy_store import PolicyStore
from ponybot.prompt_filter import FilterResult
from ponybot.settings import PolicySettings
from ponybot.term_lists import CLASSES

if TYPE_CHECKING:
    from bot.client import PonyClient as PonyBot

log = logging.getLogger(__name__)
T = TypeVar("T")


def can_manage_channels() -> Callable[[T], T]:
    """Run-time check: the member has Manage Channels here."""

    async def predicate(interaction: discord.Interaction[Any]) -> bool:
        if interaction.permissions.manage_channels:
            return True
        raise app_commands.MissingPermissions(["manage_channels"])

    return app_commands.check(predicate)


def can_manage_server() -> Callable[[T], T]:
    """Run-time check: the member has Manage Server."""

    async def predicate(interaction: discord.Interaction[Any]) -> bool:
        if interaction.permissions.manage_guild:
            return True
        raise app_commands.MissingPermissions(["manage_guild"])

    return app_commands.check(predicate)


#: The options of /policy set and /policy default (one set of rules, two scopes).
RULE_OPTIONS = {
    "mode": "sfw, or nsfw (only takes effect in age-restricted channels)",
    "flagged": "In NSFW mode: post images the classifier flags, or put them behind a spoiler",
    "strictness": "SFW image check: standard, or strict (lower thresholds; 'sensitive' art withheld too)",
    "forbidden_terms": "Extra terms to refuse, comma-separated ('none' clears)",
    "negative_prompt": "Added to every negative prompt",
    "max_steps": "Most steps allowed",
    "max_count": "Most images per job",
    "max_size": "Largest size allowed",
    "cooldown": "Seconds a member waits between jobs",
    "models": "Only these models, comma-separated ('all' lifts the limit)",
    "loras": "Only these LoRAs, comma-separated ('all' lifts the limit)",
}


def parse_terms(text: str | None) -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; ``"none"`` clears; None leaves the list as it is."""
    if text is None:
        return None
    if text.strip().lower() in ("none", "-", ""):
        return []
    return [term.strip() for term in text.split(",") if term.strip()]


#: A name a moderator allows that does not exist, per kind.
UNKNOWN_NAMES = {
    "model": N_("no model named {names} (known: {known})"),
    "LoRA": N_("no LoRA named {names} (known: {known})"),
}


def parse_allowed(text: str | None, known: list[str] | None = None, what: str = "model") -> list[str] | None:
    """``"a, b"`` -> ``["a", "b"]``; ``"all"`` lifts the limit (``[]``); None leaves it as it is.
    With ``known``, a name not among them is refused (a typo would lock the channel out)."""
    if text is None:
        return None
    if text.strip().lower() in ("all", "any", "none", "-", ""):
        return []
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if known is not None and name not in known]
    if unknown:
        raise InvalidRequestError(f"{what}s", UNKNOWN_NAMES[what], names=", ".join(unknown),
                                  known=", ".join(known or []))
    return names


def rules_from(mode: Mode | None, flagged: FlaggedAction | None, forbidden_terms: str | None,
               negative_prompt: str | None, max_steps: int | None, max_count: int | None,
               max_size: tuple[int, int] | None, cooldown: int | None, gallery: Literal["on", "off"] | None = None,
               models: list[str] | None = None, loras: list[str] | None = None,
               strictness: Strictness | None = None) -> PolicyRules:
    return PolicyRules(
        mode=mode, flagged=flagged, strictness=strictness, forbidden_terms=parse_terms(forbidden_terms),
        negative_prompt=negative_prompt,
        max_steps=max_steps, max_count=max_count, max_pixels=max_size[0] * max_size[1] if max_size else None,
        cooldown_s=cooldown, gallery=None if gallery is None else gallery == "on", models=models, loras=loras,
    )


STRICTNESS_SHOWN = {
    Strictness.STANDARD: N_("Image check: **standard** (questionable or explicit art and explicit tags are withheld)."),
    Strictness.STRICT: N_("Image check: **strict** (lower thresholds; sensitive art is withheld too)."),
}


#: The built-in term lists a channel applies (docs/prompt-filter.md), without and with their strict entries.
TERM_LISTS_SHOWN = {
    False: N_("Built-in term lists: {lists}."),
    True: N_("Built-in term lists: {lists} (with their strict entries)."),
}


CAPS_SHOWN = {
    "steps": N_("steps ≤ {value:,}"),
    "count": N_("images per job ≤ {value:,}"),
    "pixels": N_("pixels ≤ {value:,}"),
}


def describe(policy: EffectivePolicy, settings: PolicySettings, locale: Any = "en-US") -> str:
    if policy.mode is Mode.NSFW:
        mode = t(locale, "**NSFW**: this channel is age-restricted and its policy allows NSFW.")
    elif policy.configured_mode is Mode.NSFW:
        mode = t(locale, "**SFW**: the policy allows NSFW, but the channel is not age-restricted, so Discord's "
                 "rules keep it SFW.")
    elif policy.age_restricted:
        mode = t(locale, "**SFW** (kept SFW although the channel is age-restricted).")
    else:
        mode = "**SFW**."
    lines = [mode]
    if policy.mode is Mode.SFW:
        lines.append(t(locale, "Prompts get `{tag}`; flagged images are never posted.", tag=settings.safe_tag))
        lines.append(t(locale, STRICTNESS_SHOWN[policy.strictness]))
    elif policy.flagged is FlaggedAction.POST:
        lines.append(t(locale, "Images the classifier flags are posted."))
    else:
        lines.append(t(locale, "Images the classifier flags are posted behind a spoiler."))
    base = set(settings.always_forbidden_terms) | set(
        settings.sfw_forbidden_terms if policy.mode is Mode.SFW else settings.nsfw_forbidden_terms)
    extra = [term for term in policy.forbidden_terms if term not in base]
    none = t(locale, "none")
    builtin = ", ".join(f"`{name}`" for name in policy.builtin_terms) or none
    lines.append(t(locale, TERM_LISTS_SHOWN[policy.mode is Mode.SFW and policy.strictness is Strictness.STRICT],
                   lists=builtin))
    lines.append(t(locale, "Extra forbidden terms: {terms}", terms=", ".join(f"`{term}`" for term in extra) or none))
    if policy.negative_prompt:
        lines.append(t(locale, "Negative prompt added: `{negative}`", negative=policy.negative_prompt))
    caps = [t(locale, cap, value=value) for cap, value in ((CAPS_SHOWN["steps"], policy.max_steps),
                                                           (CAPS_SHOWN["count"], policy.max_count),
                                                           (CAPS_SHOWN["pixels"], policy.max_pixels)) if value]
    lines.append(t(locale, "Caps: {caps}", caps=", ".join(caps) or t(locale, "the bot defaults")))
    lines.append(t(locale, "Cooldown per member: {seconds} s", seconds=policy.cooldown_s) if policy.cooldown_s
                 else t(locale, "No cooldown."))
    if not policy.gallery:
        lines.append(t(locale, "Images made here are kept out of the gallery."))
    every = t(locale, "all")
    lines.append(t(locale, "Models: {models} · LoRAs: {loras}",
                   models=", ".join(policy.models) if policy.models else every,
                   loras=", ".join(policy.loras) if policy.loras else every))
    return "\n".join(lines)


def matched_line(match: FilterResult, locale: Any = "en-US") -> str:
    """Which list, which entry and which class refused a prompt, and what the filter read in it."""
    cls = CLASSES.get(match.cls or "", match.cls or "")
    return t(locale, "Matched: list “{list}”, entry “{term}” ({cls}); the prompt read as “{found}”.",
             list=match.list_name or "", term=match.term or "", cls=t(locale, cls), found=match.found or "")


def describe_change(entry: AuditEntry, locale: Any = "en-US") -> str:
    where = t(locale, "server default") if entry.scope == "server" else f"<#{entry.scope.split(':', 1)[1]}>"
    keys = sorted(set(entry.before) | set(entry.after))
    changes = [f"{key}: `{entry.before.get(key, '—')}` → `{entry.after.get(key, '—')}`" for key in keys
               if entry.before.get(key) != entry.after.get(key)]
    when = f"<t:{int(entry.at.timestamp())}:R>"
    return f"{when} <@{entry.user_id}> {where}: " + ("; ".join(changes) or t(locale, "reset (no rules)"))


class Policy(commands.GroupCog, group_name="policy", group_description="Channel rules for image generation"):
    def __init__(self, bot: PonyBot) -> None:
        self.bot = bot
        super().__init__()

    @property
    def store(self) -> PolicyStore:
        return PolicyStore(self.bot.sync_redis)

    async def effective(self, interaction: discord.Interaction[PonyBot]) -> EffectivePolicy:
        origin = origin_of(interaction)
        rules = await asyncio.to_thread(self.store.rules_for, origin.guild_id, origin.channel_id)
        return resolve(rules, age_restricted=origin.channel_nsfw, settings=self.bot.settings.policy)

    async def answer(self, interaction: discord.Interaction[PonyBot], title: str, text: str) -> None:
        embed = discord.Embed(title=title, description=text[:4000], colour=0xE39BD9)
        await interaction.response.send_message(embed=embed, ephemeral=True)

    @app_commands.command(name="show", description="This channel's rules")
    @app_commands.guild_only()
    async def show(self, interaction: discord.Interaction[PonyBot]) -> None:
        policy = await self.effective(interaction)
        lacking = needs.lacking_here(interaction)
        await self.answer(interaction, t(interaction.locale, "Policy in #{channel}",
                                         channel=getattr(interaction.channel, "name", "?")),
                          describe(policy, self.bot.settings.policy, interaction.locale) + "\n" +
                          missing_in_channel(str(interaction.locale), needs.names(interaction.locale, lacking)))

    @app_commands.command(name="set", description="Change this channel's rules (Manage Channels)")
    @app_commands.describe(**RULE_OPTIONS, gallery="off: keep images made here out of the gallery")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_channels=True)
    @can_manage_channels()
    async def set(self, interaction: discord.Interaction[PonyBot], mode: Mode | None = None,
                  flagged: FlaggedAction | None = None, strictness: Strictness | None = None,
                  forbidden_terms: str | None = None,
                  negative_prompt: app_commands.Range[str, 0, 500] | None = None,
                  max_steps: app_commands.Range[int, 1, 150] | None = None,
                  max_count: app_commands.Range[int, 1, 4] | None = None,
                  max_size: app_commands.Transform[tuple[int, int], SizeTransformer] | None = None,
                  cooldown: app_commands.Range[int, 0, 3600] | None = None,
                  gallery: Literal["on", "off"] | None = None, models: str | None = None,
                  loras: str | None = None) -> None:
        rules = rules_from(mode, flagged, forbidden_terms, negative_prompt, max_steps, max_count, max_size, cooldown,
                           gallery, parse_allowed(models, list(self.bot.settings.models)),
                           parse_allowed(loras, what="LoRA"), strictness)
        assert interaction.guild_id is not None and interaction.channel_id is not None
        entry = await asyncio.to_thread(self.store.set_channel, interaction.guild_id, interaction.channel_id, rules,
                                        by=interaction.user.id)
        log.info("policy of channel %s changed by %s: %s", interaction.channel_id, interaction.user.id, entry.after)
        policy = await self.effective(interaction)
        await self.answer(interaction, t(interaction.locale, "Channel policy updated"),
                          describe(policy, self.bot.settings.policy, interaction.locale))

    @app_commands.command(name="reset", description="Remove this channel's rules: the server default applies")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_channels=True)
    @can_manage_channels()
    async def reset(self, interaction: discord.Interaction[PonyBot]) -> None:
        assert interaction.guild_id is not None and interaction.channel_id is not None
        await asyncio.to_thread(self.store.reset_channel, interaction.guild_id, interaction.channel_id,
                                by=interaction.user.id)
        policy = await self.effective(interaction)
        await self.answer(interaction, t(interaction.locale, "Channel policy reset"),
                          describe(policy, self.bot.settings.policy, interaction.locale))

    @app_commands.command(name="default", description="Change the server's default rules (Manage Server)")
    @app_commands.describe(**RULE_OPTIONS)
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_guild=True)
    @can_manage_server()
    async def default(self, interaction: discord.Interaction[PonyBot], mode: Mode | None = None,
                      flagged: FlaggedAction | None = None, strictness: Strictness | None = None,
                      forbidden_terms: str | None = None,
                      negative_prompt: app_commands.Range[str, 0, 500] | None = None,
                      max_steps: app_commands.Range[int, 1, 150] | None = None,
                      max_count: app_commands.Range[int, 1, 4] | None = None,
                      max_size: app_commands.Transform[tuple[int, int], SizeTransformer] | None = None,
                      cooldown: app_commands.Range[int, 0, 3600] | None = None, models: str | None = None,
                      loras: str | None = None) -> None:
        rules = rules_from(mode, flagged, forbidden_terms, negative_prompt, max_steps, max_count, max_size, cooldown,
                           models=parse_allowed(models, list(self.bot.settings.models)),
                           loras=parse_allowed(loras, what="LoRA"), strictness=strictness)
        assert interaction.guild_id is not None
        await asyncio.to_thread(self.store.set_guild, interaction.guild_id, rules, by=interaction.user.id)
        policy = await self.effective(interaction)
        await self.answer(interaction, t(interaction.locale, "Server default updated (as it applies here)"),
                          describe(policy, self.bot.settings.policy, interaction.locale))

    @app_commands.command(name="history", description="Who changed the rules, when, and how")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_channels=True)
    @can_manage_channels()
    async def history(self, interaction: discord.Interaction[PonyBot]) -> None:
        assert interaction.guild_id is not None
        entries = await asyncio.to_thread(self.store.history, interaction.guild_id, 10)
        text = "\n".join(describe_change(entry, interaction.locale) for entry in entries) or t(
            interaction.locale, "No changes yet.")
        await self.answer(interaction, t(interaction.locale, "Policy history"), text)

    @app_commands.command(name="test", description="What this channel's rules would do with a prompt")
    @app_commands.describe(prompt="The prompt to try (nothing is generated)")
    @app_commands.guild_only()
    @app_commands.default_permissions(manage_channels=True)
    @can_manage_channels()
    async def test(self, interaction: discord.Interaction[PonyBot], prompt: app_commands.Range[str, 1, 1000]) -> None:
        policy = await self.effective(interaction)
        settings = self.bot.settings
        request = make_request(settings, {"prompt": prompt})
        decision = apply(policy, request, quality=settings.defaults.quality, safe_tag=settings.policy.safe_tag,
                         model=settings.model_entry(request.model))
        locale = interaction.locale
        if decision.allowed:
            text = t(locale, "**Allowed.**\nPrompt: `{prompt}`\nNegative prompt: `{negative}`", prompt=decision.prompt,
                     negative=decision.negative_prompt)
        else:
            text = t(locale, "**Refused**: {reason}.", reason=t_reason(locale, decision.reason) if decision.reason
                     else "")
            if decision.match:  # which list and entry: what a false refusal is reported with (docs/prompt-filter.md)
                text += "\n" + matched_line(decision.match, locale)
        await self.answer(interaction, t(locale, "Policy test ({mode})", mode=policy.mode.value.upper()), text)


async def setup(bot: PonyBot) -> None:
    await bot.add_cog(Policy(bot))
