"""A tiny checked reader for YAML mappings: every error names the dotted key at fault."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

_REQUIRED = object()


class SchemaError(ValueError):
    """A profile or workload description is malformed; the message names the key."""


class Fields:
    """Reads keys of one mapping, checking type and range; `done()` rejects unknown keys."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, Mapping):
            raise SchemaError(f"{path or 'top level'}: expected a mapping, "
                              f"got {type(data).__name__}")
        self.data: Mapping[str, Any] = data
        self.path = path
        self._allowed: list[str] = []

    def key(self, k: str) -> str:
        return f"{self.path}.{k}" if self.path else k

    def has(self, k: str) -> bool:
        self._allowed.append(k)
        return k in self.data

    def _get(self, k: str, default: Any) -> Any:
        self._allowed.append(k)
        if k in self.data and self.data[k] is not None:
            return self.data[k]
        if default is _REQUIRED:
            raise SchemaError(f"{self.key(k)}: required key is missing")
        return default

    def num(self, k: str, default: Any = _REQUIRED, *, lo: float | None = None,
            hi: float | None = None, lo_open: bool = False, integer: bool = False) -> Any:
        v = self._get(k, default)
        if v is default and default is not _REQUIRED:
            return v
        kind = "an integer" if integer else "a number"
        rng = ""
        if lo is not None or hi is not None:
            left = "(" if lo_open else "["
            rng = f" in {left}{'-inf' if lo is None else _fmt(lo)}, " \
                  f"{'inf' if hi is None else _fmt(hi)}]"
        bad = SchemaError(f"{self.key(k)}: expected {kind}{rng}, got {v!r}")
        if isinstance(v, bool) or not isinstance(v, int | float):
            raise bad
        if integer:
            if isinstance(v, float) and not v.is_integer():
                raise bad
            v = int(v)
        else:
            v = float(v)
            if math.isnan(v):
                raise bad
        if lo is not None and (v < lo or (lo_open and v == lo)):
            raise bad
        if hi is not None and v > hi:
            raise bad
        return v

    def text(self, k: str, default: Any = _REQUIRED,
             choices: Sequence[str] | None = None) -> Any:
        v = self._get(k, default)
        if v is default and default is not _REQUIRED:
            return v
        if not isinstance(v, str) or not v:
            raise SchemaError(f"{self.key(k)}: expected a non-empty string, got {v!r}")
        if choices is not None and v not in choices:
            raise SchemaError(f"{self.key(k)}: expected one of {', '.join(choices)}; "
                              f"got {v!r}")
        return v

    def flag(self, k: str, default: bool) -> bool:
        v = self._get(k, default)
        if not isinstance(v, bool):
            raise SchemaError(f"{self.key(k)}: expected true or false, got {v!r}")
        return v

    def sub(self, k: str, default: Any = _REQUIRED) -> Any:
        v = self._get(k, default)
        if v is default and default is not _REQUIRED:
            return v
        return Fields(v, self.key(k))

    def items(self, k: str, default: Any = _REQUIRED) -> list[Fields]:
        v = self._get(k, default)
        if v is default and default is not _REQUIRED:
            return []
        if not isinstance(v, list):
            raise SchemaError(f"{self.key(k)}: expected a list, got {type(v).__name__}")
        return [Fields(item, f"{self.key(k)}[{i}]") for i, item in enumerate(v)]

    def raw(self, k: str, default: Any = _REQUIRED) -> Any:
        return self._get(k, default)

    def done(self) -> None:
        unknown = [k for k in self.data if k not in self._allowed]
        if unknown:
            raise SchemaError(f"{self.key(str(unknown[0]))}: unknown key; allowed keys here: "
                              f"{', '.join(sorted(set(self._allowed)))}")


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"
