"""Every exception ponybot raises on purpose, with messages meant for people."""

from __future__ import annotations


class PonybotError(Exception):
    """Base class: ``str(error)`` is a message a member or operator can act on."""


class ConfigError(PonybotError):
    """A setting is missing or has a value that is not allowed."""


class InvalidRequestError(PonybotError):
    """A generation option is out of bounds; ``field`` names the option."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


class SchemaVersionError(PonybotError):
    """A message was written by a bot or worker speaking another schema version."""


class QueueFullError(PonybotError):
    """The queue (or a member's or server's share of it) is full."""


class RedisUnavailableError(PonybotError):
    """Redis cannot be reached."""


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
