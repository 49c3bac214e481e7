"""Channel policy: what moderators set, how it resolves for a channel, and what it does to a prompt.

The effective mode is SFW unless the channel is age-restricted *and* its policy
says NSFW. Rules come from the operator's settings, the server's default and the
channel's override, the most specific winning field by field.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from ponybot.errors import N_, InvalidRequestError, Reason, reason
from ponybot.networks import parse_loras
from ponybot.prompt_filter import FilterResult, check_prompt
from ponybot.prompts import QUALITY_NEGATIVE, QUALITY_TAG, join_tags
from ponybot.schemas import GenerationRequest, utcnow
from ponybot.term_lists import TermList, builtin_lists, custom_list

if TYPE_CHECKING:
    from ponybot.settings import ModelEntry, PolicySettings


class Mode(StrEnum):
    SFW = "sfw"
    NSFW = "nsfw"


class FlaggedAction(StrEnum):
    """What an NSFW channel does with an image the classifier flags."""

    POST = "post"
    SPOILER = "spoiler"


class Strictness(StrEnum):
    """How readily an SFW channel's image check withholds: ``strict`` lowers every threshold
    (``safety.strict_factor``) and counts the tagger's ``sensitive`` rating as flagged too."""

    STANDARD = "standard"
    STRICT = "strict"


class PolicyRules(BaseModel):
    """What a moderator set for a server or a channel; ``None`` inherits."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Mode | None = None
    flagged: FlaggedAction | None = None
    strictness: Strictness | None = None
    forbidden_terms: list[str] | None = None
    negative_prompt: str | None = Field(None, max_length=500)
    max_steps: int | None = Field(None, ge=1, le=150)
    max_count: int | None = Field(None, ge=1, le=4)
    max_pixels: int | None = Field(None, ge=256 * 256, le=1024 * 1024)
    cooldown_s: int | None = Field(None, ge=0, le=3600)
    gallery: bool | None = None  #: False: this channel's images never go to the gallery
    models: list[str] | None = None  #: the only models allowed ([] or None: every model)
    loras: list[str] | None = None  #: the only LoRAs allowed ([] or None: every LoRA)

    def over(self, base: PolicyRules) -> PolicyRules:
        """These rules on top of ``base``: every field set here wins."""
        return base.model_copy(update=self.model_dump(exclude_none=True))

    def changes(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, mode="json")


def effective_mode(configured: Mode, age_restricted: bool) -> Mode:
    """NSFW only where Discord allows it (an age-restricted channel) and the policy asks for it."""
    return Mode.NSFW if configured is Mode.NSFW and age_restricted else Mode.SFW


class EffectivePolicy(BaseModel):
    model_config = ConfigDict(frozen=True)

    mode: Mode
    configured_mode: Mode
    age_restricted: bool
    flagged: FlaggedAction
    strictness: Strictness = Strictness.STANDARD
    forbidden_terms: list[str]
    negative_prompt: str
    max_steps: int | None
    max_count: int | None
    max_pixels: int | None
    cooldown_s: int
    gallery: bool = True  #: this channel's images go to the gallery (when its server has it on)
    models: list[str] = Field(default_factory=list)  #: empty: every model
    loras: list[str] = Field(default_factory=list)  #: empty: every LoRA
    #: The operator's and the channel's own terms by list name (``always``, ``sfw`` or ``nsfw``, ``channel``).
    term_sources: dict[str, list[str]] = Field(default_factory=dict)
    builtin_terms: list[str] = Field(default_factory=list)  #: the built-in lists applied (``ponybot/terms``)

    def term_lists(self) -> tuple[TermList, ...]:
        """Every list the prompt filter searches here: the operator's and the channel's, then the built-in
        lists (``ponybot/terms``: every language the bot speaks, whatever the member's) at this strictness
        (SFW: sexual content; NSFW: young characters)."""
        own = tuple(custom_list(name, tuple(terms)) for name, terms in self.term_sources.items() if terms)
        builtin = builtin_lists(self.strictness is Strictness.STRICT)
        return own + tuple(terms for terms in builtin if terms.name in self.builtin_terms)


def resolve(rules: PolicyRules, *, age_restricted: bool, settings: PolicySettings) -> EffectivePolicy:
    configured = rules.mode or Mode.SFW
    mode = effective_mode(configured, age_restricted)
    sources = {"always": list(settings.always_forbidden_terms), mode.value: list(
        settings.sfw_forbidden_terms if mode is Mode.SFW else settings.nsfw_forbidden_terms),
        "channel": list(rules.forbidden_terms or [])}
    terms = [term for source in sources.values() for term in source]
    negative = join_tags(settings.sfw_negative if mode is Mode.SFW else "", rules.negative_prompt or "")
    return EffectivePolicy(
        mode=mode, configured_mode=configured, age_restricted=age_restricted,
        flagged=rules.flagged or FlaggedAction.SPOILER, strictness=rules.strictness or Strictness.STANDARD,
        forbidden_terms=terms, negative_prompt=negative,
        max_steps=rules.max_steps, max_count=rules.max_count, max_pixels=rules.max_pixels,
        cooldown_s=rules.cooldown_s or 0, gallery=rules.gallery is not False, models=rules.models or [],
        loras=rules.loras or [], term_sources=sources,
        builtin_terms=list(settings.term_lists if mode is Mode.SFW else settings.nsfw_term_lists),
    )



def warm_prompt_filter(settings: PolicySettings) -> None:
    """Build the prompt filter's tables for the policy of a channel no moderator changed, SFW and age-restricted,
    now rather than in the first job that needs them (a fifth of a second of CPU a process, which every worker
    would otherwise spend on its first job)."""
    for age_restricted in (False, True):
        for strictness in Strictness:
            check_prompt("", resolve(PolicyRules(strictness=strictness), age_restricted=age_restricted,
                                     settings=settings).term_lists())


#: A request over a channel's cap, per option (``{cap}``, ``{value}``; a size also ``{width}``, ``{height}``).
CAP_REFUSALS = {
    "steps": N_("this channel allows at most {cap} steps (you asked for {value})"),
    "count": N_("this channel allows at most {cap} images per job (you asked for {value})"),
    "size": N_("this channel allows images of at most {cap:,} pixels (you asked for {width}x{height})"),
}


@dataclass(frozen=True)
class Decision:
    """What a policy does with a request: refuse it (``reason``: a catalog message the bot translates),
    or the prompts to generate."""

    allowed: bool
    reason: Reason | None
    prompt: str
    negative_prompt: str
    field: str | None = None
    match: FilterResult | None = None  #: the prompt filter's refusal: which list and entry matched


def apply(policy: EffectivePolicy | None, request: GenerationRequest, *, quality: bool, safe_tag: str = "safe",
          model: ModelEntry | None = None) -> Decision:
    """Check the request against the policy and compose the prompts (``policy=None``: no channel, as given).

    ``model`` gives the model's own quality tags and whether the safe tag applies to it (default: pony-v4's).
    LoRA tags and embedding names are part of the prompt, so the forbidden-term check reads them too.
    """
    quality_tag, quality_negative = (model.quality_tag, model.quality_negative) if model else (
        QUALITY_TAG, QUALITY_NEGATIVE)
    prompt = join_tags(quality_tag if quality else "", request.prompt)
    negative = join_tags(request.negative_prompt, quality_negative if quality else "")
    if policy is None:
        return Decision(True, None, prompt, negative)
    refusal = check_prompt(request.prompt, policy.term_lists())
    if not refusal.allowed:
        return Decision(False, refusal.reason, prompt, negative, "prompt", refusal)
    if policy.models and request.model and request.model not in policy.models:
        return Decision(False, reason(N_("this channel allows only the models {models} (you asked for {model})"),
                                      models=", ".join(policy.models), model=request.model),
                        prompt, negative, "model")
    try:
        loras = parse_loras(request.prompt)
    except InvalidRequestError as error:
        return Decision(False, error.as_reason(), prompt, negative, "prompt")
    refused = [lora.name for lora in loras if policy.loras and lora.name not in policy.loras]
    if refused:
        return Decision(False, reason(N_("this channel does not allow the LoRA {names} (allowed: {allowed})"),
                                      names=", ".join(refused), allowed=", ".join(policy.loras)),
                        prompt, negative, "prompt")
    for field, value, cap in (
        ("steps", request.steps, policy.max_steps),
        ("count", request.count, policy.max_count),
        ("size", request.width * request.height, policy.max_pixels),
    ):
        if cap is not None and value > cap:
            return Decision(False, reason(CAP_REFUSALS[field], cap=cap, value=value, width=request.width,
                                          height=request.height), prompt, negative, field)
    if policy.mode is Mode.SFW and (model is None or model.safe_tag):
        prompt = join_tags(safe_tag, prompt)
    return Decision(True, None, prompt, join_tags(negative, policy.negative_prompt))


class AuditEntry(BaseModel):
    """One policy change: who, when, where, before and after."""

    at: datetime = Field(default_factory=utcnow)
    user_id: int
    scope: str
    before: dict[str, Any]
    after: dict[str, Any]
