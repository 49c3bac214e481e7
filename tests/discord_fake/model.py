"""What the fake Discord is made of: ids, times, an interaction's record, and the members tests act as."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DISCORD_EPOCH_MS = 1420070400000
EPHEMERAL = 1 << 6
MANAGE_CHANNELS = 1 << 4
MANAGE_GUILD = 1 << 5
MEMBER_PERMISSIONS = (1 << 10) | (1 << 11) | (1 << 15) | (1 << 31)  # view, send, attach, use app commands
TOKEN_LIFE_S = 15 * 60
_counter = itertools.count()


def snowflake(at: float | None = None) -> int:
    ms = int((time.time() if at is None else at) * 1000)
    return ((ms - DISCORD_EPOCH_MS) << 22) | (next(_counter) % 4096)


def iso(at: float | None = None) -> str:
    return datetime.fromtimestamp(time.time() if at is None else at, UTC).isoformat()


@dataclass
class Interaction:
    id: int
    token: str
    user_id: int
    channel_id: int
    created: float  #: when the token's 15 minutes started
    sent: float  #: when the bot received it: it has 3 s to answer
    message_id: int | None = None  #: the message whose button was clicked
    responded: bool = False
    responded_at: float | None = None
    callback_type: int | None = None
    ephemeral: bool = False
    original_id: int | None = None
    followups: list[int] = field(default_factory=list)
    choices: list[dict[str, Any]] | None = None  #: what an autocomplete callback offered


def user(user_id: int, name: str, *, bot: bool = False) -> dict[str, Any]:
    """A Discord user object."""
    return {"id": str(user_id), "username": name, "discriminator": "0", "global_name": name, "avatar": None,
            "bot": bot, "public_flags": 0}


MEMBER = user(snowflake(), "twilight")
OTHER_MEMBER = user(snowflake(), "rarity")
MODERATOR = user(snowflake(), "celestia")
