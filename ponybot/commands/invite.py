"""``ponybot invite``: print the link that adds the bot to a server, with exactly the permissions it uses.

The scopes and permission bits live in ``bot/needs.py`` (imported only when the command runs: the
contract package never loads discord.py).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ponybot.errors import ConfigError
from ponybot.settings import Settings


def add_parser(commands: Any) -> None:
    commands.add_parser("invite", help="print the link that adds the bot to a server",
                        description="Print the link that adds the bot to a server, asking for exactly the "
                                    "permissions it uses. Needs discord.application_id or the bot's token.")


def application_id(settings: Settings) -> int:
    """The configured ``discord.application_id``, else the one the token carries in its first segment."""
    from bot.needs import application_id_from_token

    if settings.discord.application_id:
        return settings.discord.application_id
    token = settings.discord.token.get_secret_value() if settings.discord.token else ""
    found = application_id_from_token(token) if token else None
    if found is None:
        raise ConfigError("no application id: set discord.application_id (the developer portal's General "
                          "Information page) or the bot's token (DISCORD_TOKEN)")
    return found


def cmd_invite(args: argparse.Namespace, settings: Settings) -> int:
    from bot.needs import invite_url

    sys.stdout.write(invite_url(application_id(settings)) + "\n")
    return 0
