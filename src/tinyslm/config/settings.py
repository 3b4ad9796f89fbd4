"""Settings defined once: a config dataclass field carries its default, bounds and help.

The pattern of TRL's ``make_parser`` / transformers' ``HfArgumentParser``: :func:`setting` is a
``dataclasses.field`` whose ``metadata`` holds what every consumer needs, and each consumer reads it:

- the command line (:mod:`tinyslm.cli.train`) generates its flags from the fields (type, default, bounds,
  help, choices);
- :func:`check_bounds` validates a config object in the library (``train.resolve_config``), so a config
  built in Python gets the same checks as one built from flags;
- :func:`pydantic_fields` builds the study's YAML sections (``study.TrainSection``, ``MethodOverrides``)
  with the same defaults and bounds.

So a bound such as ``warmup_ratio`` in [0, 1) is written once, on the field.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, Field
from typing import Any

from tinyslm.core.errors import UserError


def setting(
    default: Any = MISSING,
    *,
    help: str,  # noqa: A002 - the name argparse and HfArgumentParser use
    ge: float | None = None,
    gt: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    also: tuple[Callable[[Any], bool], str] | None = None,
    choices: Sequence[str] | None = None,
    flag: str | tuple[str, ...] | None = None,
    negate: bool = False,
    cli_default: Any = MISSING,
    resumable: bool = False,
) -> Any:
    """A dataclass field with its help and bounds (``ge``/``gt``/``lt``/``le``, as pydantic names them).

    ``also``: one more rule (predicate, its wording) checked after the bounds, e.g. "0 (off) or > 1".
    ``flag``/``negate``: the flag (or flags: aliases) when it is not ``--field-name`` (``--no-progress`` sets
    ``progress=False``).
    ``cli_default``: the flag's default for a field the library requires (``--model``).
    ``resumable``: may change between a run and its ``--resume`` (it does not change what is trained).
    ``help`` may use ``%(default)s`` (argparse fills it in), so the default is written once.
    """
    metadata = {
        "help": help, "ge": ge, "gt": gt, "lt": lt, "le": le, "also": also, "choices": choices, "flag": flag,
        "negate": negate, "cli_default": cli_default, "resumable": resumable,
    }  # fmt: skip
    if default is MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _num(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


def rule_text(f: Field) -> str | None:
    """The field's bounds in words (">= 1", "> 0", "in [0, 1)"), or None when it has none."""
    m = f.metadata
    if m.get("also"):
        return m["also"][1]
    lo = ("[", m["ge"]) if m.get("ge") is not None else ("(", m["gt"]) if m.get("gt") is not None else None
    hi = ("]", m["le"]) if m.get("le") is not None else (")", m["lt"]) if m.get("lt") is not None else None
    if lo and hi:
        return f"in {lo[0]}{_num(lo[1])}, {_num(hi[1])}{hi[0]}"
    if lo:
        return f"{'>=' if lo[0] == '[' else '>'} {_num(lo[1])}"
    if hi:
        return f"{'<=' if hi[0] == ']' else '<'} {_num(hi[1])}"
    return None


def within_bounds(f: Field, v: Any) -> bool:
    """Whether ``v`` (not None) satisfies the field's bounds and its ``also`` rule."""
    m = f.metadata
    ok = (
        (m.get("ge") is None or v >= m["ge"])
        and (m.get("gt") is None or v > m["gt"])
        and (m.get("lt") is None or v < m["lt"])
        and (m.get("le") is None or v <= m["le"])
    )
    also = m.get("also")
    return ok and (also is None or also[0](v))


def base_type(cls: type, name: str) -> type:
    """The field's type without ``| None`` (``int | None`` -> ``int``)."""
    hint = typing.get_type_hints(cls)[name]
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    return args[0] if args else hint


def check_bounds(cfg: Any) -> None:
    """UserError naming the flag for the first field of ``cfg`` outside its bounds.

    Floats must be finite first (inf/nan pass comparisons like ">= 0" and then train NaN weights). A field
    that is None (a protocol default not yet filled in, an optional limit) is not checked.
    """
    flds = [f for f in dataclasses.fields(cfg) if f.metadata]
    for f in flds:
        v = getattr(cfg, f.name)
        if (
            base_type(type(cfg), f.name) is float
            and v is not None
            and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v))
        ):
            raise UserError(f"--{f.name.replace('_', '-')} must be a finite number, got {v}")
    for f in flds:
        v = getattr(cfg, f.name)
        rule = rule_text(f)
        if rule is not None and v is not None and not within_bounds(f, v):
            raise UserError(f"--{f.name.replace('_', '-')} must be {rule}, got {v}")


def resumable_names(cls: type) -> frozenset[str]:
    """Fields marked ``resumable``."""
    return frozenset(f.name for f in dataclasses.fields(cls) if f.metadata.get("resumable"))


def pydantic_fields(cls: type, names: Sequence[str], *, optional: bool = False) -> dict[str, Any]:
    """``create_model`` field definitions for ``names`` of dataclass ``cls``: same types, defaults and bounds.

    ``optional=True``: every field defaults to None (an override that is not given), bounds still apply to
    a given value. The ``also`` rules come as validators from :func:`pydantic_validators`.
    """
    from pydantic import Field as PydanticField

    by_name = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name in names:
        f = by_name[name]
        m = f.metadata
        hint = base_type(cls, name)
        default = None if optional else f.default
        if m.get("choices"):
            hint = typing.Literal[tuple(m["choices"])]  # type: ignore[valid-type]
        typ = hint | None if optional or f.default is None else hint
        bounds = {k: m[k] for k in ("ge", "gt", "lt", "le") if m.get(k) is not None}
        out[name] = (
            typ,
            PydanticField(default, description=m["help"].replace("%(default)s", str(f.default)), **bounds),
        )
    return out


def pydantic_validators(cls: type, names: Sequence[str]) -> dict[str, Any]:
    """Validators for the ``also`` rules of ``names`` (pydantic's own bounds cannot say "0 or > 1")."""
    from pydantic import field_validator

    by_name = {f.name: f for f in dataclasses.fields(cls)}
    out: dict[str, Any] = {}
    for name in names:
        also = by_name[name].metadata.get("also")
        if also is None:
            continue
        ok, words = also

        def check(v: Any, ok: Callable[[Any], bool] = ok, words: str = words) -> Any:
            if v is not None and not ok(v):
                raise ValueError(f"must be {words}, got {v}")
            return v

        out[f"_also_{name}"] = field_validator(name)(check)
    return out
