"""Field types for request bodies that every database can store."""

from __future__ import annotations

import math
from typing import Annotated, Any

from pydantic import AfterValidator


def _no_nul(value: str) -> str:
    # PostgreSQL text cannot hold NUL characters; refuse them up front on every driver.
    if "\x00" in value:
        raise ValueError("must not contain NUL characters (\\u0000)")
    return value


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain more than whitespace")
    return value


def _finite_json(value: Any) -> Any:
    """Check that a JSON value holds no NaN or infinity and no NUL character."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("numbers must be finite")
    if isinstance(value, str):
        _no_nul(value)
    if isinstance(value, dict):
        for key, item in value.items():
            _no_nul(key)
            _finite_json(item)
    if isinstance(value, list):
        for item in value:
            _finite_json(item)
    return value


StoredText = Annotated[str, AfterValidator(_no_nul)]
NonBlankText = Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_blank)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_finite_json)]
