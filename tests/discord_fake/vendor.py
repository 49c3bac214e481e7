"""Regenerate ``openapi.json``: the part of Discord's OpenAPI description the bot's requests touch.

Run: ``python -m tests.discord_fake.vendor ../shared/discord-openapi.json``. Two deliberate
changes, both matching what Discord accepts: ``SnowflakeType`` also takes non-negative
integers (discord.py sends attachment ids 0, 1, ...), and nothing else is edited.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
ROUTES = {
    "/interactions/{interaction_id}/{interaction_token}/callback": ["post"],
    "/webhooks/{webhook_id}/{webhook_token}": ["post"],
    "/webhooks/{webhook_id}/{webhook_token}/messages/@original": ["patch", "delete"],
    "/webhooks/{webhook_id}/{webhook_token}/messages/{message_id}": ["patch", "delete"],
    "/channels/{channel_id}/messages": ["post"],
    "/channels/{channel_id}/messages/{message_id}": ["patch", "delete"],
    "/applications/{application_id}/commands": ["put"],
    "/applications/{application_id}/guilds/{guild_id}/commands": ["put"],
    "/users/@me/channels": ["post"],
}


def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        if isinstance(node.get("$ref"), str):
            found.add(node["$ref"].rsplit("/", 1)[1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def subset(spec: dict[str, Any]) -> dict[str, Any]:
    paths = {path: {m: spec["paths"][path][m] for m in methods} for path, methods in ROUTES.items()}
    for operations in paths.values():
        for operation in operations.values():
            operation.pop("responses", None)  # the fake writes its own answers
    schemas = spec["components"]["schemas"]
    wanted, todo = set(), _refs(paths)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo |= _refs(schemas[name]) - wanted
    kept = {name: schemas[name] for name in sorted(wanted)}
    kept["SnowflakeType"] = {"anyOf": [schemas["SnowflakeType"], {"type": "integer", "minimum": 0}]}
    return {"openapi": spec["openapi"], "info": spec["info"], "paths": paths, "components": {"schemas": kept}}


if __name__ == "__main__":
    source = json.loads(Path(sys.argv[1]).read_text())
    (HERE / "openapi.json").write_text(json.dumps(subset(source), indent=1, sort_keys=True) + "\n")
