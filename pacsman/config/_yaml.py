"""YAML loading that remembers where things stood, for config error messages.

:func:`load_yaml` parses with PyYAML's safe loader, but every mapping comes back as a
:class:`LineDict` (the 1-based line of each key, and the keys written twice) and every list
as a :class:`LineList` (the line of each item).  Both are plain ``dict``/``list`` subclasses,
so code that does not care about lines never notices them.

Keys are kept as the text written in the file: ``2:`` is the key ``"2"`` and ``no:`` is
``"no"``, not the integer 2 or ``False`` that YAML 1.1 would make of them.

A config is small, so hostile or mistaken input is refused with a located
:class:`LimitExceeded` before it costs anything: more than :data:`MAX_BYTES`, nesting deeper
than :data:`MAX_DEPTH`, more than :data:`MAX_ALIASES` aliases, or more than :data:`MAX_NODES`
values once aliases are expanded (the "billion laughs").  Numbers YAML 1.1 reads in a way
nobody means -- ``0777`` (octal, 511), ``1:30`` (base 60, 90), ``1_000``, ``0x1F`` -- are
refused with the decimal to write instead; only plain decimal numbers are read.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from pacsman.errors import ConfigError, Problem

__all__ = [
    "MAX_ALIASES",
    "MAX_BYTES",
    "MAX_DEPTH",
    "MAX_NODES",
    "LimitExceeded",
    "LineDict",
    "LineList",
    "item_line",
    "key_line",
    "load_yaml",
    "not_a_regular_file",
    "read_config_text",
]

_MERGE_TAG = "tag:yaml.org,2002:merge"

#: The largest config file read (the example config, every key set, is about 6 KB).
MAX_BYTES = 256 * 1024
#: The deepest nesting of lists and mappings, aliases expanded (a config needs about 5).
MAX_DEPTH = 32
#: The most aliases (``*name``) in one file.
MAX_ALIASES = 100
#: The most values (scalars, lists, mappings) in one file once every alias is expanded.
MAX_NODES = 5_000
#: Digits in the longest number read (ports, seconds and counts need far fewer).
_MAX_DIGITS = 18
_DECIMAL_INT = re.compile(r"[-+]?[0-9]+")
_DECIMAL_FLOAT = re.compile(r"[-+]?(?:[0-9]+\.[0-9]*|\.[0-9]+)(?:[eE][-+][0-9]+)?")
_SPECIAL_FLOAT = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]+")


class LimitExceeded(ComposerError):
    """The YAML is within the grammar but beyond what a config can need; the mark locates it."""


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
    """PyYAML's safe loader, building :class:`LineDict` and :class:`LineList`, within limits."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.pacsman_depth = 0
        self.pacsman_aliases = 0
        self.pacsman_nodes = 0

    def fetch_flow_collection_start(self, TokenClass: type) -> None:
        """Scan ``[`` or ``{``, refusing deep flow nesting before the scanner's look-ahead for
        simple keys (quadratic in the open brackets) costs anything."""
        if self.flow_level >= MAX_DEPTH:
            raise _too_deep(self.get_mark())
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        """Compose one node, refusing deep nesting before it can exhaust the stack."""
        event = self.peek_event()  # type: ignore[no-untyped-call]  # untyped in types-PyYAML
        mark = _mark(event)
        if isinstance(event, AliasEvent):
            self.pacsman_aliases += 1
            if self.pacsman_aliases > MAX_ALIASES:
                raise LimitExceeded(
                    None,
                    None,
                    f"more than {MAX_ALIASES} aliases ('*name'); a config needs a few: "
                    "write the values out instead",
                    mark,
                )
        else:
            self.pacsman_nodes += 1
            if self.pacsman_nodes > MAX_NODES:
                raise LimitExceeded(
                    None,
                    None,
                    f"more than {MAX_NODES} values; a config holds a few hundred: "
                    "is this the right file?",
                    mark,
                )
        self.pacsman_depth += 1
        try:
            if self.pacsman_depth > MAX_DEPTH:
                raise _too_deep(mark)
            node = super().compose_node(parent, index)
        finally:
            self.pacsman_depth -= 1
        return node

    def compose_document(self) -> Node | None:
        """Compose the document, then refuse it if aliases expand it beyond the limits."""
        node = super().compose_document()
        if node is not None:
            _measure(node, 1, {})
        return node

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        """Construct one value; a value PyYAML cannot build is a located error, not a crash."""
        try:
            return super().construct_object(node, deep=deep)
        except yaml.YAMLError:
            raise
        except (ValueError, TypeError, AttributeError, OverflowError):
            kind = str(node.tag).rpartition(":")[2]
            raise ConstructorError(
                None,
                None,
                f"this value is no valid {kind}; remove its tag, or quote it if it is text",
                node.start_mark,
            ) from None


def _mark(event: object) -> yaml.Mark | None:
    """The start mark of a parser event (PyYAML's C and Python marks differ in the stubs)."""
    mark = getattr(event, "start_mark", None)
    return mark if isinstance(mark, yaml.Mark) else None


def _too_deep(mark: yaml.Mark | None) -> LimitExceeded:
    return LimitExceeded(
        None,
        None,
        f"lists and mappings nested more than {MAX_DEPTH} deep (aliases expanded); "
        "a config needs about 5 levels: look for an unclosed '[' or '{'",
        mark,
    )


_IN_PROGRESS = (-1, -1)


def _measure(node: Node, depth: int, known: dict[int, tuple[int, int]]) -> tuple[int, int]:
    """Return ``(values, height)`` of ``node`` with aliases expanded, refusing what is too big.

    ``known`` memoizes by node identity, so shared (aliased) nodes are measured once.

    Raises:
        LimitExceeded: too deep, too many values, or an alias inside its own anchor.
    """
    if depth > MAX_DEPTH:
        raise _too_deep(node.start_mark)
    sizes = known.get(id(node))
    if sizes == _IN_PROGRESS:
        raise LimitExceeded(
            None, None, "an alias refers to a list or mapping that contains it", node.start_mark
        )
    if sizes is None:
        known[id(node)] = _IN_PROGRESS
        sizes = _measure_children(node, depth, known)
        known[id(node)] = sizes
    if depth + sizes[1] > MAX_DEPTH:
        raise _too_deep(node.start_mark)
    return sizes


def _measure_children(node: Node, depth: int, known: dict[int, tuple[int, int]]) -> tuple[int, int]:
    children: list[Node] = []
    if isinstance(node, SequenceNode):
        children = list(node.value)
    elif isinstance(node, MappingNode):
        children = [part for pair in node.value for part in pair]
    values, height = 1, 0
    for child in children:
        child_values, child_height = _measure(child, depth + 1, known)
        values, height = values + child_values, max(height, child_height + 1)
        if values > MAX_NODES:
            raise LimitExceeded(
                None,
                None,
                f"more than {MAX_NODES} values once aliases are expanded; "
                "a config holds a few hundred: remove the aliases that repeat whole lists",
                node.start_mark,
            )
    return values, height


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


def _construct_int(loader: _LineLoader, node: ScalarNode) -> int:
    """A plain decimal integer; YAML 1.1's other spellings are refused with the fix."""
    text = str(loader.construct_scalar(node))
    if len(text) > _MAX_DIGITS + 1:
        raise _number_error(
            f"a number of {len(text)} digits; no setting takes more than {_MAX_DIGITS}", node
        )
    if _DECIMAL_INT.fullmatch(text) and not _LEADING_ZERO.fullmatch(text):
        return int(text)
    read = _yaml11_int(loader, node)
    if read is None:
        raise _number_error(
            f"{text} is not a whole number; write it in plain decimal, or quote it if it is text",
            node,
        )
    if _LEADING_ZERO.fullmatch(text.replace("_", "")):
        raise _leading_zero(text, f"which YAML 1.1 reads as octal ({read})", node)
    if ":" in text:
        form = f"is a YAML 1.1 base-60 number (read as {read})"
        fix = f"quote it ('{text}') if it is a time or text, or write {read}"
    else:
        kind = "has '_' in it, which YAML 1.1 drops" if "_" in text else "is a YAML 1.1 number"
        form = f"{kind} (read as {read})"
        fix = f"write {read} in plain decimal, or quote it ('{text}') if it is text"
    raise _number_error(f"{text} {form}; {fix}", node)


def _yaml11_int(loader: _LineLoader, node: ScalarNode) -> str | None:
    """What YAML 1.1 makes of an integer spelling, for the message; ``None`` if nothing."""
    try:
        return str(loader.construct_yaml_int(node))
    except ValueError:  # an explicit !!int tag on something that is no number
        return None


def _leading_zero(text: str, read: str, node: Node) -> ConstructorError:
    if len(text) > _MAX_DIGITS + 1:
        return _number_error(
            f"a number of {len(text)} digits; no setting takes more than {_MAX_DIGITS}", node
        )
    decimal = text.replace("_", "").lstrip("+-").lstrip("0") or "0"
    return _number_error(
        f"{text} has a leading zero, {read}; write {decimal} for the decimal number, "
        f"or quote it ('{text}') if it is text",
        node,
    )


def _construct_str(loader: _LineLoader, node: ScalarNode) -> str:
    """Text; an unquoted number with a leading zero (``09``) is refused like ``0777``."""
    text = str(loader.construct_scalar(node))
    if node.style is None and _LEADING_ZERO.fullmatch(text):
        raise _leading_zero(text, "which makes YAML 1.1 read digits as octal or as text", node)
    return text


def _construct_float(loader: _LineLoader, node: ScalarNode) -> float:
    """A plain decimal number with a dot, ``.inf`` or ``.nan``; base 60 and ``_`` refused."""
    text = str(loader.construct_scalar(node))
    if len(text) > 4 * _MAX_DIGITS:
        raise _number_error(f"a number of {len(text)} characters; write a shorter one", node)
    if _DECIMAL_FLOAT.fullmatch(text) or _SPECIAL_FLOAT.fullmatch(text):
        return float(loader.construct_yaml_float(node))
    read = loader.construct_yaml_float(node)
    if ":" in text:
        form = f"is a YAML 1.1 base-60 number (read as {read})"
        fix = f"quote it ('{text}') if it is a time or text, or write {read}"
    else:
        form = f"has '_' in it, which YAML 1.1 drops (read as {read})"
        fix = f"write {read}, or quote it ('{text}') if it is text"
    raise _number_error(f"{text} {form}; {fix}", node)


def _number_error(message: str, node: Node) -> ConstructorError:
    return ConstructorError(None, None, message, node.start_mark)


_LineLoader.add_constructor("tag:yaml.org,2002:map", _construct_mapping)
_LineLoader.add_constructor("tag:yaml.org,2002:seq", _construct_sequence)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_LineLoader.add_constructor("tag:yaml.org,2002:float", _construct_float)
_LineLoader.add_constructor("tag:yaml.org,2002:str", _construct_str)


def load_yaml(text: str) -> object:
    """Parse one YAML document safely, keeping lines; ``None`` for an empty document.

    Raises:
        yaml.YAMLError: the text is not valid YAML, or goes beyond the limits above
            (:class:`LimitExceeded`); ``MarkedYAMLError`` carries the place.
    """
    return yaml.load(text, Loader=_LineLoader)  # safe: _LineLoader is a SafeLoader subclass


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)
_BOMS = (
    (b"\xff\xfe\x00\x00", "UTF-32"),
    (b"\x00\x00\xfe\xff", "UTF-32"),
    (b"\xff\xfe", "UTF-16"),
    (b"\xfe\xff", "UTF-16"),
)


def not_a_regular_file(mode: int) -> str | None:
    """``None`` for a regular file, else what it is: ``a named pipe (FIFO)``, ``a directory``..."""
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def read_config_text(path: Path) -> str:
    """Read a config file: a regular file of at most :data:`MAX_BYTES`, UTF-8 (BOM dropped).

    A FIFO or device is refused at once (opened without blocking, then checked), never read.

    Raises:
        ConfigError: unreadable, not a regular file, too large, or not UTF-8.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise _file_error(path, f"cannot read the file: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as stream:
        kind = not_a_regular_file(os.fstat(fd).st_mode)
        if kind is not None:
            raise _file_error(
                path, f"is {kind}, not a regular file; give the path of a YAML config file"
            )
        raw = stream.read(MAX_BYTES + 1)
    if len(raw) > MAX_BYTES:
        raise _file_error(
            path,
            f"is larger than {MAX_BYTES // 1024} KiB; a pacsman config is a few KB: "
            "is this the right file?",
        )
    return _decode(path, raw)


def _decode(path: Path, raw: bytes) -> str:
    for bom, encoding in _BOMS:
        if raw.startswith(bom):
            raise _file_error(path, f"the file is {encoding}, not UTF-8; save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        message = f"not UTF-8 text (byte {exc.start}); save the file as UTF-8"
        raise _file_error(path, message) from None


def _file_error(path: Path, message: str) -> ConfigError:
    return ConfigError([Problem(source=str(path), message=message)])


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
