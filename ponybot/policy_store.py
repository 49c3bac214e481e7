"""Policies in Redis: a server default, channel overrides, and an audit log of every change."""

from __future__ import annotations

import redis

from ponybot import keys
from ponybot.policy import AuditEntry, PolicyRules

AUDIT_MAXLEN = 1000


class PolicyStore:
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def guild_rules(self, guild_id: int) -> PolicyRules:
        return _rules(self.conn.get(keys.guild_policy(guild_id)))

    def channel_rules(self, guild_id: int, channel_id: int) -> PolicyRules:
        return _rules(self.conn.hget(keys.channel_policy(guild_id, channel_id), str(channel_id)))

    def rules_for(self, guild_id: int | None, channel_id: int) -> PolicyRules:
        """The server default with the channel's override on top (DMs: nothing set), in one round trip."""
        if guild_id is None:
            return PolicyRules()
        with self.conn.pipeline(transaction=False) as pipe:
            pipe.hget(keys.channel_policy(guild_id, channel_id), str(channel_id))
            pipe.get(keys.guild_policy(guild_id))
            channel, guild = pipe.execute()
        return _rules(channel).over(_rules(guild))

    def set_channel(self, guild_id: int, channel_id: int, rules: PolicyRules, *, by: int) -> AuditEntry:
        before = self.channel_rules(guild_id, channel_id)
        after = rules.over(before)
        self.conn.hset(keys.channel_policy(guild_id, channel_id), str(channel_id), after.model_dump_json())
        return self._audit(guild_id, f"channel:{channel_id}", before, after, by)

    def reset_channel(self, guild_id: int, channel_id: int, *, by: int) -> AuditEntry:
        before = self.channel_rules(guild_id, channel_id)
        self.conn.hdel(keys.channel_policy(guild_id, channel_id), str(channel_id))
        return self._audit(guild_id, f"channel:{channel_id}", before, PolicyRules(), by)

    def set_guild(self, guild_id: int, rules: PolicyRules, *, by: int) -> AuditEntry:
        before = self.guild_rules(guild_id)
        after = rules.over(before)
        self.conn.set(keys.guild_policy(guild_id), after.model_dump_json())
        return self._audit(guild_id, "server", before, after, by)

    def history(self, guild_id: int, count: int = 10) -> list[AuditEntry]:
        entries: list[tuple[bytes, dict[bytes, bytes]]] = self.conn.xrevrange(  # type: ignore[assignment, unused-ignore]
            keys.policy_audit(guild_id), count=count
        )
        return [AuditEntry.model_validate_json(fields[b"data"]) for _id, fields in entries]

    def _audit(self, guild_id: int, scope: str, before: PolicyRules, after: PolicyRules, by: int) -> AuditEntry:
        entry = AuditEntry(user_id=by, scope=scope, before=before.changes(), after=after.changes())
        self.conn.xadd(keys.policy_audit(guild_id), {"data": entry.model_dump_json()}, maxlen=AUDIT_MAXLEN,
                       approximate=True)
        return entry


def _rules(raw: bytes | str | None) -> PolicyRules:
    return PolicyRules.model_validate_json(raw) if raw else PolicyRules()
