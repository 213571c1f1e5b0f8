"""Dispatch of hooks to the Module and callbacks, skipping the ones nobody overrides."""

from __future__ import annotations

from typing import Any, Callable

from engine._module import Module
from engine.callbacks._base import Callback

__all__ = ["HookDispatcher"]


def _overrides(obj: object, base: type, name: str) -> bool:
    return getattr(type(obj), name, None) is not getattr(base, name, None)


class HookDispatcher:
    """Calls ``module.<hook>(*args)`` then ``callback.<hook>(trainer, module, *args)`` for each callback.

    The list of overriding targets is computed once per hook, so an empty hook costs one
    dict lookup on the training step's path.
    """

    def __init__(self, trainer: Any, module: Module, callbacks: list[Callback]) -> None:
        self._trainer = trainer
        self._module = module
        self._callbacks = callbacks
        self._cache: dict[str, tuple[Callable[..., Any] | None, list[Callable[..., Any]]]] = {}

    def _targets(self, name: str) -> tuple[Callable[..., Any] | None, list[Callable[..., Any]]]:
        targets = self._cache.get(name)
        if targets is None:
            module_fn = getattr(self._module, name) if _overrides(self._module, Module, name) else None
            cb_fns = [getattr(cb, name) for cb in self._callbacks if _overrides(cb, Callback, name)]
            targets = self._cache[name] = (module_fn, cb_fns)
        return targets

    def module(self, name: str, *args: Any) -> Any:
        fn = self._targets(name)[0]
        return fn(*args) if fn is not None else None

    def callbacks(self, name: str, *args: Any) -> None:
        for fn in self._targets(name)[1]:
            fn(self._trainer, self._module, *args)

    def __call__(self, name: str, *args: Any) -> Any:
        """Module first, then callbacks (docs/hooks.md); returns the module's result."""
        module_fn, cb_fns = self._cache.get(name) or self._targets(name)
        result = module_fn(*args) if module_fn is not None else None
        for fn in cb_fns:
            fn(self._trainer, self._module, *args)
        return result

    def has(self, name: str) -> bool:
        module_fn, cb_fns = self._targets(name)
        return module_fn is not None or bool(cb_fns)
