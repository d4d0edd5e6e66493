"""Operator-installed extensions, found by entry-point group and loaded by name.

A job spec names a plugin; it never carries an import path (a submitted spec is data:
docs/security.md). What a name resolves to is whatever the operator installed in the
coordinator's environment, the same way model builders are (``tsfl.models``):

* ``tsfl.strategies`` — server strategies, subclasses of
  :class:`tsfl.strategies.base.Strategy` (``strategy.name``, options in
  ``strategy.options``);
* ``tsfl.selection`` — selection policies, subclasses of
  :class:`tsfl.pipeline.selection_policies.SelectionPolicy` (``selection.kind``).

docs/extending.md shows how to write and install one of each.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib.metadata import EntryPoint, entry_points

from tsfl.errors import TsflError

STRATEGY_GROUP = "tsfl.strategies"
SELECTION_GROUP = "tsfl.selection"


class PluginError(TsflError, ValueError):
    """A plugin that is not installed, or is not what its group requires."""


def installed(group: str) -> dict[str, EntryPoint]:
    """The installed plugins of ``group`` by name (metadata only: nothing is imported)."""
    return {ep.name: ep for ep in entry_points(group=group)}


def known_name(group: str, name: str, built_in: Iterable[str], what: str) -> str:
    """``name`` when it is built in or installed in ``group``; else a ValueError naming
    both lists (what a spec validator raises)."""
    built = list(built_in)
    if name in built:
        return name
    plugins = installed(group)
    if name not in plugins:
        raise ValueError(f"unknown {what} {name!r}: built in are {', '.join(built)}; "
                         f"installed: {', '.join(sorted(plugins)) or 'none'}")
    return name


def load_plugin(group: str, name: str, base: type) -> type:
    """The class installed as ``name`` in ``group``; it must subclass ``base``."""
    found = installed(group).get(name)
    if found is None:
        names = ", ".join(sorted(installed(group))) or "none"
        raise PluginError(f"no {group} plugin {name!r} is installed (installed: {names})")
    cls = found.load()
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise PluginError(f"{group} plugin {name!r} ({found.value}) is not a subclass of "
                          f"{base.__module__}.{base.__qualname__}")
    return cls
