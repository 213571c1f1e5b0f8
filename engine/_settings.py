"""``set KEY=VALUE`` on a running job: optimizer param-group values and a Module's tunables.

Validation and application are separate so rank 0 can refuse a bad command before any
rank acts on it, and every rank then applies the same accepted one.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

__all__ = ["SettingError", "check_setting", "apply_setting"]

_SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr")


class SettingError(ValueError):
    """A ``set`` that names no known value, or gives the wrong kind of value."""


def _selected_groups(optimizers: Sequence[Any], group: str | int | None) -> list[tuple[int, int, dict[str, Any]]]:
    """(optimizer index, group index, param group) chosen by a group name or a flat index; all when None."""
    groups = [(o, g, pg) for o, opt in enumerate(optimizers) for g, pg in enumerate(opt.param_groups)]
    if group is None:
        return groups
    if isinstance(group, int) and not isinstance(group, bool):
        if not 0 <= group < len(groups):
            raise SettingError(f"group {group}: there are {len(groups)} param groups (0..{len(groups) - 1})")
        return [groups[group]]
    chosen = [entry for entry in groups if entry[2].get("name") == group]
    if not chosen:
        names = sorted({str(pg["name"]) for _, _, pg in groups if "name" in pg})
        known = f"named groups: {', '.join(names)}" if names else "no param group has a 'name'"
        raise SettingError(f"no param group named {group!r} ({known})")
    return chosen


def check_setting(key: str, value: Any, group: str | int | None, optimizers: Sequence[Any],
                  tunables: dict[str, Any]) -> None:
    """Raise SettingError unless ``key=value`` can be applied to a tunable or the chosen param groups."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SettingError(f"{key}={value!r}: the value must be a finite number")
    if key in tunables and group is None:
        if isinstance(tunables[key], int) and not float(value).is_integer():
            raise SettingError(f"{key} is an integer tunable; {value} is not a whole number")
        return
    groups = _selected_groups(optimizers, group)
    having = [pg for _, _, pg in groups if key in pg]
    if not having:
        keys = sorted({k for _, _, pg in groups for k, v in pg.items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
        raise SettingError(f"unknown key {key!r}: optimizer param groups have {', '.join(keys) or 'no numbers'}; "
                           f"module tunables: {', '.join(sorted(tunables)) or 'none'}")
    for pg in having:
        current = pg[key]
        if isinstance(current, bool) or not isinstance(current, (int, float)):
            raise SettingError(f"{key} is {type(current).__name__} ({current!r}) in the optimizer; "
                               "set changes numbers only")
    if key == "lr" and value <= 0:
        raise SettingError(f"lr={value}: the learning rate must be positive")


def apply_setting(key: str, value: float, group: str | int | None, optimizers: Sequence[Any],
                  schedulers: Sequence[Any], tunables: dict[str, Any]) -> dict[str, Any]:
    """Apply a checked setting; returns {"key", "old", "new"} for the reply and the event log.

    Setting ``lr`` under a scheduler rescales the schedule (its base values) by new/old,
    so the change lasts instead of being overwritten at the next scheduler step.
    """
    if key in tunables and group is None:
        old = tunables[key]
        tunables[key] = type(old)(value) if isinstance(old, (int, float)) and not isinstance(old, bool) else value
        return {"key": key, "old": old, "new": tunables[key], "target": "tunable"}
    old_values = []
    for _, _, pg in _selected_groups(optimizers, group):
        if key not in pg:
            continue
        old = pg[key]
        old_values.append(old)
        pg[key] = int(value) if isinstance(old, int) and float(value).is_integer() else float(value)
        if key == "lr":
            _rescale_schedule(pg, old, float(value), schedulers)
    return {"key": key, "old": old_values[0] if len(set(old_values)) == 1 else old_values, "new": value,
            "target": "optimizer", "groups": len(old_values)}


def _rescale_schedule(pg: dict[str, Any], old: float, new: float, schedulers: Sequence[Any]) -> None:
    ratio = new / old if old else None
    for key in _SCHEDULE_KEYS:
        if key in pg and isinstance(pg[key], (int, float)):
            pg[key] = pg[key] * ratio if ratio is not None else new
    for scheduler in _flattened(schedulers):
        groups = getattr(getattr(scheduler, "optimizer", None), "param_groups", [])
        index = next((i for i, candidate in enumerate(groups) if candidate is pg), None)
        if index is None:
            continue
        for name in ("base_lrs", "max_lrs"):
            base = getattr(scheduler, name, None)
            if isinstance(base, list) and index < len(base):
                base[index] = base[index] * ratio if ratio is not None else new
        last = getattr(scheduler, "_last_lr", None)
        if isinstance(last, list) and index < len(last):
            last[index] = new


def _flattened(schedulers: Sequence[Any]) -> list[Any]:
    """The schedulers and, for SequentialLR / ChainedScheduler, the ones they drive."""
    out: list[Any] = []
    for scheduler in schedulers:
        out.append(scheduler)
        out.extend(_flattened(getattr(scheduler, "_schedulers", None) or []))
    return out
