"""What a visitor sends, parsed in one place with the bounds the databases hold.

Ids in paths fit their column (``INTEGER`` is 32 bits on PostgreSQL, ``BIGINT`` 64 bits on both): past it no
row can exist, so the answer is the route's 404, never a driver's overflow. Days stay inside what a ``date``
can step over; text never carries NUL (PostgreSQL refuses it in text). Bad filters are a :class:`BadInput` (400).
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

from sqlalchemy import BigInteger, Column
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException
from starlette.requests import Request

from gallery.queries import BadInput, Filters
from ponybot.schemas import parse_size

FIRST_DAY, LAST_DAY = date.min, date.max - timedelta(days=1)  #: ``until`` takes in its whole day


def id_limit(column: Column[Any]) -> int:
    """The largest id ``column`` holds on every database the gallery runs on."""
    return 2**63 - 1 if isinstance(column.type, BigInteger) else 2**31 - 1


def path_id(request: Request, name: str, column: Column[Any], missing: str) -> int:
    """The path parameter ``name`` as an id of ``column``; a 404 saying ``missing`` when no row could have it."""
    value = int(request.path_params[name])
    if not 0 <= value <= id_limit(column):
        raise HTTPException(404, missing)
    return value


def path_text(request: Request, name: str, limit: int, missing: str) -> str:
    """The path parameter ``name`` as text a row could hold; a 404 saying ``missing`` when none can."""
    value = str(request.path_params[name])
    if len(value) > limit or "\x00" in value:
        raise HTTPException(404, missing)
    return value


def bounded_text(value: str, name: str, limit: int) -> str:
    """A visitor's text (a search, a filter, a form field): BadInput when longer than ``limit`` or with NUL."""
    if "\x00" in value:
        raise BadInput(f"{name}: must not contain NUL characters")
    if len(value) > limit:
        raise BadInput(f"{name}: at most {limit} characters (got {len(value)})")
    return value


def day(params: QueryParams, name: str) -> date | None:
    """The day in query parameter ``name`` (YYYY-MM-DD), or None when empty; BadInput outside the calendar."""
    raw = params.get(name)
    if not raw:
        return None
    try:
        found = date.fromisoformat(bounded_text(raw, name, 10))
    except ValueError:
        found = None
    if found is None or not FIRST_DAY <= found <= LAST_DAY:
        raise BadInput(f"{name}: must be a day from {FIRST_DAY.isoformat()} to {LAST_DAY.isoformat()} as YYYY-MM-DD, "
                       f"got {raw[:40]!r}")
    return found


def parse_filters(params: QueryParams, max_search: int, **fixed: Any) -> Filters:
    """The list filters of a query string, each bounded; BadInput naming the first one that is not."""
    size_text = bounded_text(params.get("size", ""), "size", 20)
    try:
        size = parse_size(size_text) if size_text else None
    except ValueError as error:
        raise BadInput(f"size: {error}") from None
    return Filters(q=bounded_text(params.get("q", ""), "search", max_search),
                   model=bounded_text(params.get("model", ""), "model", 200),
                   sampler=bounded_text(params.get("sampler", ""), "sampler", 32), size=size,
                   since=day(params, "since"), until=day(params, "until"),
                   period=bounded_text(params.get("period", "week"), "period", 32), **fixed)
