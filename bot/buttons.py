"""The custom ids of the persistent buttons: ``ponybot:<feature>:<action>:<job id>[:<image>]``."""

from __future__ import annotations


def custom_id(feature: str, action: str, job_id: str, index: int | None = None) -> str:
    value = f"ponybot:{feature}:{action}:{job_id}" + (f":{index}" if index is not None else "")
    assert len(value) <= 100, value
    return value
