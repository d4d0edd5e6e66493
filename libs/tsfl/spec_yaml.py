"""Job specs are data: a bounded YAML reader.

A spec comes from a file (``tsfl run``) or from the network (``SubmitJob``). Before it is
parsed it must fit :data:`MAX_SPEC_BYTES`; while it is composed, anchors and aliases are
refused (a 500-byte "billion laughs" alias bomb expands to gigabytes), nesting is capped
at :data:`MAX_DEPTH`, the node count at :data:`MAX_NODES` and every scalar at
:data:`MAX_SCALAR` characters, so reading a spec costs
memory and time linear in its (bounded) size. Only plain YAML types come out (safe
loader: no Python objects).
"""

from __future__ import annotations

from typing import Any

import yaml

from tsfl.errors import TsflError

MAX_SPEC_BYTES = 256 * 1024
MAX_DEPTH = 32
MAX_NODES = 20_000
#: no scalar of a spec is longer (YAML 1.1's base-60 ints, e.g. ``1:1:1:…``, parse in
#: quadratic time in PyYAML: a 240 KB one blocked for 5 s)
MAX_SCALAR = 1024


class SpecYamlError(TsflError, ValueError):
    """The text is not a spec we read: too large, too deep, aliased, or not YAML."""


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that refuses aliases and counts depth and nodes as it composes."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise SpecYamlError(f"line {event.start_mark.line + 1}: anchors and aliases "
                                "(*name) are not allowed in a job spec")
        event = self.peek_event()
        if isinstance(event, yaml.ScalarEvent) and len(event.value) > MAX_SCALAR:
            raise SpecYamlError(f"line {event.start_mark.line + 1}: a value longer than "
                                f"{MAX_SCALAR} characters: not a job spec")
        if getattr(event, "anchor", None):
            raise SpecYamlError(f"line {event.start_mark.line + 1}: anchors (&name) are not "
                                "allowed in a job spec")
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise SpecYamlError(f"more than {MAX_NODES} values: not a job spec")
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise SpecYamlError(f"nested deeper than {MAX_DEPTH} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_spec_text(text: str | bytes) -> Any:
    """The YAML document in ``text``, bounded as the module says; raises
    :class:`SpecYamlError` with a one-line reason."""
    size = len(text.encode("utf-8") if isinstance(text, str) else text)
    if size > MAX_SPEC_BYTES:
        raise SpecYamlError(f"the spec is {size} bytes, more than the {MAX_SPEC_BYTES} a job "
                            "spec may have")
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise SpecYamlError("the spec is not UTF-8 text") from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise SpecYamlError(f"{where}invalid YAML: {problem}") from None
    finally:
        loader.dispose()
