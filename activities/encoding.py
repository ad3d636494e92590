"""How destinations write keys, values and headers as JSON: text, or base64 with a flag."""

from __future__ import annotations

import json
from typing import Any

from workflows.types import Blob


def blob_fields(name: str, blob: Blob | None, flag: str | None = None) -> dict[str, Any]:
    """``{name: text}``, plus ``{flag or name_base64: True}`` when the text is base64."""
    if blob is None:
        return {name: None}
    if blob.base64:
        return {name: blob.text, flag or f"{name}_base64": True}
    return {name: blob.text}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def parse_json_text(text: str) -> tuple[bool, Any]:
    """Parse strict JSON (no NaN/Infinity); return ``(True, value)`` or ``(False, None)``."""
    try:
        return True, json.loads(text, parse_constant=_reject_constant)
    except ValueError:
        return False, None
