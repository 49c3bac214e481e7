"""Every exception ponybot raises on purpose, with messages meant for people."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


def N_(message: str) -> str:
    """Marks a message the bot translates for members (``bot/locale``); ``{name}`` placeholders as params."""
    return message


class Reason(BaseModel):
    """A sentence for a member as a catalog message id and its parameters, not as English text.

    The contract says *why* (a policy refusal, a job's failure); the bot writes it in the member's
    language (``bot.i18n.t_reason``); ``str()`` is the English, for logs and the CLI.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    message: str
    params: dict[str, str | int | float] = Field(default_factory=dict)

    def __str__(self) -> str:
        return self.message.format(**self.params) if self.params else self.message


def reason(message: str, /, **params: str | int | float) -> Reason:
    """``Reason`` built like a call to the translator: ``reason(N_("... {name} ..."), name=...)``."""
    return Reason(message=message, params=params)


class PonybotError(Exception):
    """Base class: ``str(error)`` is a message a member or operator can act on."""


class ConfigError(PonybotError):
    """A setting is missing or has a value that is not allowed."""


class InvalidRequestError(PonybotError):
    """A generation option is out of bounds; ``field`` names the option.

    ``template`` and ``params`` let the bot write ``reason`` in the member's language.
    """

    def __init__(self, field: str, message: str, /, **params: Any) -> None:
        reason = message.format(**params) if params else message
        super().__init__(f"{field}: {reason}")
        self.field, self.reason, self.template, self.params = field, reason, message, params

    def as_reason(self) -> Reason:
        """The refusal as a :class:`Reason` (what the bot translates)."""
        return Reason(message=self.template, params={key: value if isinstance(value, (int, float)) else str(value)
                                                     for key, value in self.params.items()})


class SchemaVersionError(PonybotError):
    """A message was written by a bot or worker speaking another schema version."""


class QueueFullError(PonybotError):
    """The queue (or a member's or server's share of it) is full."""

    def __init__(self, message: str, /, **params: Any) -> None:
        super().__init__(message.format(**params) if params else message)
        self.template, self.params = message, params


class RedisUnavailableError(PonybotError):
    """Redis cannot be reached."""


class RedisOutageError(RedisUnavailableError):
    """Redis went away and stayed away longer than ``redis.outage_patience_s``."""


class NoWorkerError(PonybotError):
    """No worker is listening on the generation queue."""


class ForgedJobError(PonybotError):
    """A job in Redis asks a worker to run something other than a generation."""


class ModelLoadError(PonybotError):
    """The model source is missing, unreadable or not a Stable Diffusion 1.5 checkpoint."""


class PolicyRefusal(PonybotError):
    """The channel's policy forbids this request; the message says why."""


class GenerationError(PonybotError):
    """A job failed in the worker; ``code`` is a stable machine-readable cause."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class ImageRefusal(PonybotError):
    """A picture from outside that will not be opened (:func:`ponybot.images.open_image`).

    ``reason``: missing, unreadable, too_large, not_image, too_many_pixels or corrupt; ``template`` and
    ``params`` let the bot write it in the member's language; ``setting``: the limit behind it, if one is.
    """

    def __init__(self, reason: str, message: str, /, *, setting: str | None = None, **params: Any) -> None:
        super().__init__(message.format(**params) if params else message)
        self.reason, self.template, self.params, self.setting = reason, message, params, setting


class SearchTooSlow(PonybotError):
    """A gallery search ran past ``gallery.search_timeout_s``: the visitor is asked for a narrower one."""


class DiscordUnreachableError(PonybotError):
    """Discord's REST API did not answer, or answered something other than what was asked (the gallery's
    permission refresh then fails closed)."""
