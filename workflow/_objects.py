"""Objects as stored JSON: validated against the workflow's object type, refused when a back
end could not store them alike (a NaN or infinite float, a NUL character)."""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import pydantic_core
from pydantic import TypeAdapter

from ._errors import UnstorableObjectError

__all__ = ["ObjectCodec"]

T = TypeVar("T")


class ObjectCodec(Generic[T]):
    """Encodes, decodes and validates objects of one type."""

    def __init__(self, object_type: Any) -> None:
        self._adapter: TypeAdapter[T] = TypeAdapter(object_type)
        self._constants = _writes_constants(self._adapter.core_schema)

    def validate(self, value: Any) -> T:
        """``value`` as a ``T`` (pydantic's ``ValidationError``, a ``ValueError``, if not)."""
        return self._adapter.validate_python(value)

    def decode(self, data: bytes) -> T:
        return self._adapter.validate_json(data)

    def encode(self, obj: Any) -> bytes:
        """The object as stored JSON. A value that does not fit ``T`` is a ``ValueError``; a
        float that is NaN or ±infinity (pydantic writes ``null``, which never reads back) and
        a NUL character in any string (PostgreSQL's jsonb cannot store one) are an
        :class:`UnstorableObjectError`, refused on every back end alike."""
        data = self._adapter.dump_json(obj, warnings="error")
        # A byte check first: pydantic writes NaN and ±inf as `null` (its default), or as
        # `NaN` / `Infinity` in a model configured with ser_json_inf_nan="constants" (those two
        # are only looked for in such types). Only an object whose JSON has one of those words
        # is looked at closely.
        if b"null" in data or (self._constants and (b"NaN" in data or b"Infinity" in data)):
            self._check_finite(obj, data)
        if b"\\u0000" in data and _NUL_ESCAPE.search(data):
            raise UnstorableObjectError(
                "the object contains a NUL character (\\x00) in a string: remove it before "
                "storing (PostgreSQL cannot store it, so no back end accepts it)"
            )
        return data

    def _check_finite(self, obj: Any, data: bytes) -> None:
        """Refuse a NaN / ±inf float that ``data`` (the object's JSON) cannot carry."""
        dumped = self._adapter.dump_python(obj, mode="json", warnings="error")
        if _PROBE is not None:  # ~2.5 µs in Rust, against ~5 µs for walking the dump in Python
            probe = _PROBE(dumped)
            if b"NaN" not in probe and b"Infinity" not in probe:
                return
        found = _non_finite(dumped)
        if not found:
            return
        stored = json.loads(data, parse_constant=lambda _: _CONSTANT)
        for path, value in found:
            written: Any = stored
            try:
                for key in path:
                    written = written[key]
            except (KeyError, IndexError, TypeError):
                continue  # not in the stored JSON at all
            if written is None or written is _CONSTANT:  # ser_json_inf_nan="strings" reads back
                where = "the object" if not path else f"field {_path_text(path)!r}"
                how = (
                    "null, which never reads back as that number"
                    if written is None
                    else "a bare NaN / Infinity, which is not JSON (PostgreSQL refuses it)"
                )
                raise UnstorableObjectError(
                    f"{where} is {value!r}: JSON has no NaN or infinity, it would be stored as "
                    f"{how}. Nothing was stored. Use a finite number or None, or let the model "
                    'write such floats as strings (ConfigDict(ser_json_inf_nan="strings"))'
                )


_NUL_ESCAPE = re.compile(rb"(?<!\\)(?:\\\\)*\\u0000")
_CONSTANT = object()  # a bare NaN / Infinity / -Infinity in stored JSON


def _make_probe() -> Callable[[Any], bytes] | None:
    """JSON of plain data with NaN / ±inf as bare constants (pydantic-core >= 2.20)."""
    probe: Callable[[Any], bytes] = functools.partial(
        pydantic_core.to_json, inf_nan_mode="constants"
    )
    try:
        probe(math.nan)
    except TypeError:
        return None
    return probe


_PROBE = _make_probe()


def _writes_constants(schema: Any) -> bool:
    """Whether a (nested) model of this core schema writes NaN / ±inf as bare constants."""
    stack, seen = [schema], set()
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, dict):
            config = item.get("config")
            if isinstance(config, dict) and config.get("ser_json_inf_nan") == "constants":
                return True
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return False


def _non_finite(value: Any) -> list[tuple[tuple[str | int, ...], float]]:
    """The paths and values of NaN / ±inf floats in JSON-mode data (dicts, lists, scalars)."""
    found: list[tuple[tuple[str | int, ...], float]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float):
            if not math.isfinite(v):
                found.append((path, v))
        elif isinstance(v, dict):
            stack.extend(((*path, k), x) for k, x in v.items())
        elif isinstance(v, list | tuple):
            stack.extend(((*path, i), x) for i, x in enumerate(v))
    found.reverse()
    return found


def _path_text(path: tuple[str | int, ...]) -> str:
    """``items[0].price`` for ``("items", 0, "price")``."""
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text
