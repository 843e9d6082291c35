"""The architecture registry: the one map from a model card's name to its nn.Module class.

Checkpoints store an architecture *name* and its constructor arguments, never
code. Loading a checkpoint looks the name up here, so a checkpoint can only
build classes this project (or a plugin of it) registered.
"""
from __future__ import annotations

import pkgutil
import sys
from typing import Any, Callable, Dict, Mapping, Type, TypeVar

from ..core.errors import RSLabError

T = TypeVar("T", bound=type)

_ARCHITECTURES: Dict[str, type] = {}


def register(name: str) -> Callable[[T], T]:
    """Class decorator: make `cls` buildable from checkpoints under `name`."""

    def decorate(cls: T) -> T:
        existing = _ARCHITECTURES.get(name)
        if existing is not None and existing is not cls and existing.__qualname__ != cls.__qualname__:
            raise ValueError(f"architecture name {name!r} is already registered to {existing.__qualname__}")
        _ARCHITECTURES[name] = cls
        return cls

    return decorate


def load_builtin() -> None:
    """Import every module in models/ so their @register decorators run.

    Through the `import` statement's own hook (builtins.__import__), not importlib.import_module: QGIS tracks a
    plugin's modules through that hook and forgets them when it unloads the plugin. Imported past it, the model
    modules outlived an unload while this registry did not: after a reload (Plugin Manager's upgrade or
    untick/tick), every checkpoint failed with "unknown architecture 'arcdnet'; this RS Lab knows: none".
    """
    package = sys.modules[__package__]
    for module in pkgutil.iter_modules(package.__path__):
        if module.name != "registry":
            __import__(f"{__package__}.{module.name}")


def architecture(name: str) -> Type[Any]:
    """The class registered under `name`, or RSLabError listing the known ones."""
    if name not in _ARCHITECTURES:
        load_builtin()
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        known = ", ".join(sorted(_ARCHITECTURES)) or "none"
        raise RSLabError(f"unknown architecture {name!r}; this RS Lab knows: {known}") from None


def build(name: str, arguments: Mapping[str, Any]) -> Any:
    """Instantiate architecture `name` with keyword `arguments` from a model card."""
    cls = architecture(name)
    try:
        return cls(**dict(arguments))
    except TypeError as exc:
        raise RSLabError(f"the model card's arguments do not fit architecture {name!r}: {exc}") from exc
