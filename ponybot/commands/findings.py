"""What ``ponybot doctor`` reports: one finding a line, and the options its checks read. The checks
(:mod:`ponybot.commands.doctor_checks`, :mod:`ponybot.commands.doctor_discord`) and the command that runs them
(:mod:`ponybot.commands.doctor`) all import this, never each other."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_MIN_FREE_GB = 2.0


@dataclass(frozen=True)
class Finding:
    """One line: what was checked, whether it is fine, what was seen, and (for a problem) what to do."""

    name: str
    ok: bool
    detail: str
    fix: str | None = None

    def line(self) -> str:
        mark = "[ok]" if self.ok else "[!!]"
        text = f"{mark} {self.name}: {self.detail}"
        return f"{text} -> {self.fix}" if self.fix and not self.ok else text


@dataclass(frozen=True)
class Options:
    min_free_gb: float = DEFAULT_MIN_FREE_GB


def finding(name: str, ok: bool, detail: str, fix: str | None = None) -> Finding:
    return Finding(name, ok, detail, fix)
