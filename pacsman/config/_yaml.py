"""YAML loading that remembers where things stood, for config error messages.

:func:`load_yaml` parses with PyYAML's safe loader, but every mapping comes back as a
:class:`LineDict` (the 1-based line of each key, and the keys written twice) and every list
as a :class:`LineList` (the line of each item).  Both are plain ``dict``/``list`` subclasses,
so code that does not care about lines never notices them.

Keys are kept as the text written in the file: ``2:`` is the key ``"2"`` and ``no:`` is
``"no"``, not the integer 2 or ``False`` that YAML 1.1 would make of them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import yaml
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["LineDict", "LineList", "item_line", "key_line", "load_yaml"]

_MERGE_TAG = "tag:yaml.org,2002:merge"


class LineDict(dict[str, object]):
    """A YAML mapping with the line of each key and the keys it sets more than once."""

    def __init__(self, *, line: int | None = None) -> None:
        super().__init__()
        self.line = line
        self.key_lines: dict[str, int] = {}
        #: ``(key, line of the repeat, line of the first occurrence)`` for each repeat.
        self.duplicates: list[tuple[str, int, int]] = []


class LineList(list[object]):
    """A YAML list with the line of each item."""

    def __init__(self, items: Sequence[object], *, lines: Sequence[int]) -> None:
        super().__init__(items)
        self.item_lines: tuple[int, ...] = tuple(lines)


class _LineLoader(yaml.SafeLoader):
    """PyYAML's safe loader, building :class:`LineDict` and :class:`LineList`."""


def _line(node: Node) -> int:
    return node.start_mark.line + 1


def _key_text(node: Node) -> str:
    if not isinstance(node, ScalarNode):
        raise ConstructorError(
            None, None, "a key must be plain text, not a list or a mapping", node.start_mark
        )
    return str(node.value)


def _find_duplicates(node: MappingNode) -> list[tuple[str, int, int]]:
    """Return the keys written twice in ``node`` itself (merged ``<<`` keys may be overridden)."""
    first: dict[str, int] = {}
    repeats: list[tuple[str, int, int]] = []
    for key_node, _ in node.value:
        if key_node.tag == _MERGE_TAG:
            continue
        key = _key_text(key_node)
        if key in first:
            repeats.append((key, _line(key_node), first[key]))
        else:
            first[key] = _line(key_node)
    return repeats


def _construct_mapping(loader: _LineLoader, node: MappingNode) -> LineDict:
    result = LineDict(line=_line(node))
    result.duplicates = _find_duplicates(node)
    loader.flatten_mapping(node)
    for key_node, value_node in node.value:
        key = _key_text(key_node)
        result[key] = loader.construct_object(value_node, deep=True)
        result.key_lines[key] = _line(key_node)
    return result


def _construct_sequence(loader: _LineLoader, node: SequenceNode) -> LineList:
    items = [loader.construct_object(child, deep=True) for child in node.value]
    return LineList(items, lines=[_line(child) for child in node.value])


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)


def load_yaml(text: str) -> object:
    """Parse one YAML document safely, keeping lines; ``None`` for an empty document.

    Raises:
        yaml.YAMLError: the text is not valid YAML (``MarkedYAMLError`` carries the place).
    """
    return yaml.load(text, Loader=_LineLoader)  # safe: _LineLoader is a SafeLoader subclass


def key_line(mapping: Mapping[str, object], key: str) -> int | None:
    """Return the line of ``key`` in ``mapping``, or of the mapping itself, when known."""
    if not isinstance(mapping, LineDict):
        return None
    return mapping.key_lines.get(key, mapping.line)


def item_line(items: Sequence[object], index: int) -> int | None:
    """Return the line of item ``index`` of ``items`` when known."""
    if isinstance(items, LineList) and index < len(items.item_lines):
        return items.item_lines[index]
    return None
