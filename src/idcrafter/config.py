"""Nested config dataclasses: dotted `key=value` overrides and a JSON round trip.

Configs are plain `@dataclass`es whose fields are scalars, tuples, lists, dicts or other config
dataclasses (torchtitan style: each section has a `build()`; recipes are Python functions that
return a whole config). This module is the generic machinery, shared by every trainer:

    cfg = apply_overrides(recipe(), ["optim.lr=3e-4", "train.mode=lora", "eval.timesteps=[0.6,0.9]"])
    save_config(cfg, run_dir / "config.json"); cfg2 = load_config(type(cfg), run_dir / "config.json")

A value is parsed by the *declared type* of its field (int, float, bool, str, Optional[...],
tuple/list as JSON or comma-separated, dict as JSON); `none`/`null` sets an Optional field to None.
Unknown keys raise an `InputError` that names the closest existing key.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from idcrafter.errors import InputError

C = TypeVar("C")
_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Nested dict of a config dataclass (tuples become lists, as in JSON)."""
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def config_from_dict(cls: type[C], data: dict[str, Any], prefix: str = "") -> C:
    """Inverse of `config_to_dict`; unknown keys and values of the wrong type raise an
    `InputError` naming the dotted key; missing keys keep their defaults."""
    if not isinstance(data, dict):
        raise InputError(f"config section {prefix.rstrip('.') or cls.__name__} must be a JSON object, "
                         f"got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            raise InputError(f"unknown config key {prefix + str(key)!r} for {cls.__name__}{_suggest(str(key), names)}")
        hint = hints[key]
        if dataclasses.is_dataclass(hint) and isinstance(value, dict):
            kwargs[key] = config_from_dict(hint, value, prefix=f"{prefix}{key}.")
            continue
        value = _from_json(hint, value)
        if not _type_ok(hint, value):
            raise InputError(f"config key {prefix + key!r} must be {_type_name(hint)}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs)


def _type_ok(hint: Any, value: Any) -> bool:
    """Whether a JSON-decoded (and `_from_json`-coerced) value has the declared type."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(a, value) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list):
        if not isinstance(value, (tuple, list)):
            return False
        elem = args[0] if args else Any
        return all(_type_ok(elem, v) for v in value)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(hint):
        return isinstance(value, hint)
    return True


def _type_name(hint: Any) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if hint is type(None):
        return "null"
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string", dict: "an object"}
    return names.get(origin or hint, getattr(hint, "__name__", str(hint)))


def save_config(cfg: Any, path: str | Path) -> Path:
    """Write the resolved config as indented JSON, atomically (a kill leaves the old file or the new)."""
    from idcrafter.utils.io import atomic_write_text, ensure_dir

    path = Path(path)
    ensure_dir(path.parent)
    atomic_write_text(path, json.dumps(config_to_dict(cfg), indent=2) + "\n")
    return path


def load_config(cls: type[C], path: str | Path) -> C:
    """Read a config written by `save_config`; a missing, corrupt or wrongly typed file is a
    one-line `CorruptFileError` / `MissingWeightsError`."""
    from idcrafter.errors import CorruptFileError, MissingWeightsError

    path = Path(path)
    if not path.is_file():
        raise MissingWeightsError(f"config not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CorruptFileError(f"{path} is not valid JSON ({exc.__class__.__name__}: {exc}): "
                               "restore it or start a new run folder") from exc
    try:
        return config_from_dict(cls, data)
    except InputError as exc:
        raise CorruptFileError(f"{path}: {exc}") from exc
    except (TypeError, ValueError) as exc:
        raise CorruptFileError(f"{path}: wrong values ({exc})") from exc


def apply_overrides(cfg: C, overrides: list[str] | tuple[str, ...]) -> C:
    """A copy of `cfg` with dotted `key=value` overrides applied in order."""
    cfg = _deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise InputError(f"override {item!r} is not key=value (e.g. optim.lr=1e-4)")
        key, text = item.split("=", 1)
        set_by_path(cfg, key.strip(), text.strip())
    return cfg


def set_by_path(cfg: Any, key: str, text: str) -> None:
    """Set the field at dotted `key` of a nested config from its string form."""
    parts = key.split(".")
    obj = cfg
    for i, name in enumerate(parts):
        if not dataclasses.is_dataclass(obj):
            raise InputError(f"{'.'.join(parts[:i])} is not a config section, cannot set {key!r}")
        names = {f.name for f in dataclasses.fields(obj)}
        if name not in names:
            prefix = ".".join(parts[:i])
            where = f" in section {prefix!r}" if prefix else ""
            raise InputError(f"unknown config key {key!r}{where}{_suggest(name, names)}")
        if i == len(parts) - 1:
            hint = typing.get_type_hints(type(obj))[name]
            try:
                setattr(obj, name, parse_value(text, hint))
            except (ValueError, json.JSONDecodeError) as exc:
                raise InputError(f"cannot set {key}={text!r}: {exc}") from exc
        else:
            obj = getattr(obj, name)


def parse_value(text: str, hint: Any) -> Any:
    """Parse a command-line string as a value of type `hint`."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and text.lower() in ("none", "null"):
            return None
        inner = [a for a in args if a is not type(None)]
        errors = []
        for a in inner:
            try:
                return parse_value(text, a)
            except (ValueError, json.JSONDecodeError) as exc:
                errors.append(str(exc))
        raise ValueError("; ".join(errors))
    if hint is bool:
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise ValueError(f"expected a boolean (true/false), got {text!r}")
    if hint is int:
        return int(text)
    if hint is float:
        return float(text)
    if hint is str or hint is Any:
        return text
    if origin in (tuple, list):
        items = json.loads(text) if text.startswith("[") else [s for s in text.split(",") if s]
        elem = args[0] if args else Any
        vals = [v if not isinstance(v, str) or elem is Any else parse_value(v, elem) for v in items]
        vals = [_from_json(elem, v) for v in vals]
        return tuple(vals) if origin is tuple else vals
    if origin is dict or hint is dict:
        value = json.loads(text)
        if not isinstance(value, dict):
            raise ValueError(f"expected a JSON object, got {text!r}")
        return value
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, json.loads(text))
    raise ValueError(f"cannot parse a value of type {hint}")


def _from_json(hint: Any, value: Any) -> Any:
    """Coerce a JSON value to the declared type (nested configs, tuples, ints as floats...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return _from_json(inner[0], value) if len(inner) == 1 else value
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return config_from_dict(hint, value)
    if origin is tuple and isinstance(value, (list, tuple)):
        elem = args[0] if args else Any
        return tuple(_from_json(elem, v) for v in value)
    if origin is list and isinstance(value, (list, tuple)):
        elem = args[0] if args else Any
        return [_from_json(elem, v) for v in value]
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def diff_configs(a: Any, b: Any) -> dict[str, tuple[Any, Any]]:
    """{dotted key: (value in a, value in b)} for every leaf that differs."""
    out: dict[str, tuple[Any, Any]] = {}

    def walk(x: Any, y: Any, prefix: str) -> None:
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                walk(x.get(k), y.get(k), f"{prefix}{k}.")
        elif x != y:
            out[prefix[:-1]] = (x, y)

    walk(config_to_dict(a), config_to_dict(b), "")
    return out


def _deepcopy(cfg: C) -> C:
    import copy

    return copy.deepcopy(cfg)


def _suggest(name: str, names: set[str]) -> str:
    close = difflib.get_close_matches(name, sorted(names), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f"; known keys: {', '.join(sorted(names))}"
