"""The search space, declared once as ``NAME=KIND:ARGS`` specs (CLI) or a dict (Python); Optuna distributions.

Kinds: ``float:LOW:HIGH[:STEP]``, ``log:LOW:HIGH`` (log-uniform float), ``int:LOW:HIGH[:STEP]``,
``logint:LOW:HIGH``, ``cat:A,B,C``. Parsing needs no Optuna, so bad input fails before anything starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from engine._errors import SweepError

__all__ = ["KINDS", "Param", "parse_param", "parse_space"]

KINDS = ("float", "log", "int", "logint", "cat")
_USAGE = ("float:LOW:HIGH[:STEP], log:LOW:HIGH, int:LOW:HIGH[:STEP], logint:LOW:HIGH or cat:A,B,...")


@dataclass(frozen=True)
class Param:
    """One searched parameter: its name, kind, range (or choices) and optional step."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    step: float | None = None
    choices: tuple[Any, ...] = ()

    def spec(self) -> str:
        """The ``KIND:ARGS`` text this parameter was (or could have been) declared with."""
        if self.kind == "cat":
            return "cat:" + ",".join(str(c) for c in self.choices)
        parts = [self.kind, _number(self.low), _number(self.high)]
        return ":".join(parts + ([_number(self.step)] if self.step is not None else []))

    def distribution(self) -> Any:
        """The Optuna distribution that samples this parameter."""
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "cat":
            return CategoricalDistribution(list(self.choices))
        if self.kind in ("int", "logint"):
            return IntDistribution(int(self.low), int(self.high), log=self.kind == "logint",
                                   step=int(self.step) if self.step is not None else 1)
        return FloatDistribution(self.low, self.high, log=self.kind == "log", step=self.step)


def parse_param(text: str) -> Param:
    """``NAME=KIND:ARGS`` as a Param; SweepError says what is wrong and what would be right."""
    name, sep, spec = text.partition("=")
    name = name.strip()
    if not sep or not name or any(c.isspace() for c in name):
        raise SweepError(f"bad --param {text!r}: expected NAME=KIND:ARGS, e.g. lr=log:1e-4:1e-1")
    return _parse_spec(name, spec.strip())


def parse_space(space: Mapping[str, Any] | Sequence[str]) -> list[Param]:
    """A search space from ``--param`` texts or a dict of name -> spec text, choices list or Param."""
    if isinstance(space, Mapping):
        params = []
        for name, spec in space.items():
            if isinstance(spec, Param):
                params.append(spec)
            elif isinstance(spec, str):
                params.append(_parse_spec(str(name), spec))
            elif isinstance(spec, (list, tuple)):
                params.append(_categorical(str(name), list(spec)))
            else:
                raise SweepError(f"parameter {name!r}: expected a spec text ({_USAGE}) or a list of choices, "
                                 f"got {type(spec).__name__}")
    else:
        params = [parse_param(text) for text in space]
    if not params:
        raise SweepError("the search space is empty: declare at least one parameter, e.g. --param lr=log:1e-4:1e-1")
    names = [p.name for p in params]
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SweepError(f"parameter {', '.join(duplicated)} declared more than once")
    return params


def _parse_spec(name: str, spec: str) -> Param:
    kind, _, rest = spec.partition(":")
    if kind not in KINDS:
        raise SweepError(f"parameter {name!r}: unknown distribution {kind!r} in {spec!r}; use {_USAGE}")
    if kind == "cat":
        return _categorical(name, [_choice(c.strip()) for c in rest.split(",")] if rest.strip() else [])
    fields = rest.split(":")
    allowed = 2 if kind in ("log", "logint") else 3
    if not 2 <= len(fields) <= allowed:
        raise SweepError(f"parameter {name!r}: {kind} takes {'LOW:HIGH' if allowed == 2 else 'LOW:HIGH[:STEP]'}, "
                         f"got {spec!r}")
    try:
        numbers = [float(f) for f in fields]
    except ValueError:
        raise SweepError(f"parameter {name!r}: {spec!r} has a bound that is not a number") from None
    if not all(math.isfinite(n) for n in numbers):
        raise SweepError(f"parameter {name!r}: {spec!r} has a bound that is not finite")
    low, high = numbers[0], numbers[1]
    step = numbers[2] if len(numbers) == 3 else None
    if kind in ("int", "logint") and not all(n.is_integer() for n in numbers):
        raise SweepError(f"parameter {name!r}: {kind} bounds and step must be whole numbers, got {spec!r}")
    if low >= high:
        raise SweepError(f"parameter {name!r}: empty range {spec!r} (LOW must be below HIGH)")
    if kind in ("log", "logint") and low <= 0:
        raise SweepError(f"parameter {name!r}: a log range needs LOW > 0, got {spec!r}")
    if step is not None and (step <= 0 or step > high - low):
        raise SweepError(f"parameter {name!r}: STEP must be positive and no larger than HIGH-LOW, got {spec!r}")
    return Param(name, kind, low, high, step)


def _categorical(name: str, choices: list[Any]) -> Param:
    if not choices or any(c == "" for c in choices):
        raise SweepError(f"parameter {name!r}: cat needs a comma-separated list of choices, e.g. cat:adam,sgd")
    if len(set(map(repr, choices))) != len(choices):
        raise SweepError(f"parameter {name!r}: a choice is listed twice in {choices}")
    if not all(c is None or isinstance(c, (bool, int, float, str)) for c in choices):
        raise SweepError(f"parameter {name!r}: choices must be numbers, strings, booleans or None")
    return Param(name, "cat", choices=tuple(choices))


def _choice(text: str) -> Any:
    """A categorical choice from the command line: numbers, true/false and none keep their type."""
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered == "none":
        return None
    for convert in (int, float):
        try:
            return convert(text)
        except ValueError:
            pass
    return text


def _number(value: float | None) -> str:
    return f"{value:g}" if value is not None else ""
