"""The run's events as a list: state changes, commands and who sent them, checkpoints, restarts, failures."""

from __future__ import annotations

import time
from typing import Any, Iterable

from rich.text import Text
from textual.widgets import RichLog

__all__ = ["EventsList", "describe_event"]

_STYLES = {"failed": "bold red", "killed": "bold red", "checkpoint_failed": "red", "restarted": "magenta",
           "preempted": "yellow", "checkpoint": "cyan", "command": "bold", "finished": "green", "stopped": "yellow"}


def describe_event(event: dict[str, Any]) -> str:
    """One line in plain words, e.g. "set lr 0.1 -> 0.01 at step 120 (by cli:me@host)"."""
    kind = event.get("event", "?")
    if kind == "command":
        args = event.get("args") or {}
        what = event.get("action", "?")
        detail = event.get("detail") or {}
        if what == "set":
            what = f"set {args.get('key')} {detail.get('old', '')} -> {args.get('value')}".replace("  ", " ")
        result = f"at step {event['step']}" if event.get("ok") and event.get("step") is not None else (
            "done" if event.get("ok") else f"refused: {event.get('error')}")
        return f"{what} {result} (by {event.get('client', '?')})"
    if kind == "checkpoint":
        return f"checkpoint at step {event.get('step')}: {event.get('path', '')}"
    if kind == "rank_up":
        return f"rank {event.get('rank')} up: pid {event.get('pid')} on {event.get('host')} ({event.get('device')})"
    if kind in ("failed", "finished", "stopped", "killed"):
        failure = event.get("failure") or {}
        why = f": rank {failure.get('rank')} {failure.get('message', '')}" if failure.get("rank") is not None else ""
        return f"run {kind} (exit status {event.get('exit_status')}){why}"
    if kind == "restarted":
        return f"group restart {event.get('restart')}" + (" from the last checkpoint" if event.get("resumed") else "")
    if kind == "preempted":
        return f"preempted by {event.get('signal')} at step {event.get('step')}"
    extras = ", ".join(f"{k} {v}" for k, v in event.items() if k not in ("time", "event", "source"))
    return f"{kind.replace('_', ' ')}" + (f": {extras}" if extras else "")


class EventsList(RichLog):
    """A scrolling list of events, newest at the bottom."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(wrap=True, markup=False, highlight=False, max_lines=2000, **kwargs)

    def add_events(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            stamp = time.strftime("%H:%M:%S", time.localtime(event.get("time", 0)))
            kind = event.get("event", "?")
            self.write(Text.assemble((stamp + " ", "dim"), (describe_event(event), _STYLES.get(kind, ""))))
