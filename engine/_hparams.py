"""Hyperparameters captured from a Module's ``__init__`` arguments."""

from __future__ import annotations

import inspect
from typing import Any

__all__ = ["AttributeDict", "collect_init_args"]


class AttributeDict(dict):
    """A dict whose keys read as attributes: ``self.hparams.lr``."""

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError as exc:
            raise AttributeError(f"no hyperparameter named {key!r}; known: {sorted(self)}") from exc

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value


def collect_init_args(frame: Any, ignore: set[str]) -> dict[str, Any]:
    """The arguments of the ``__init__`` running in ``frame`` (``**kwargs`` flattened in)."""
    info = inspect.getargvalues(frame)
    args: dict[str, Any] = {}
    for name in info.args:
        if name != "self" and name not in ignore and not name.startswith("__"):
            args[name] = info.locals[name]
    if info.varargs and info.locals.get(info.varargs):
        args[info.varargs] = tuple(info.locals[info.varargs])
    if info.keywords:
        args.update({k: v for k, v in info.locals[info.keywords].items() if k not in ignore})
    return args
