"""Reading a parsed config tree key by key, collecting every problem instead of stopping.

A :class:`Section` wraps one mapping.  Each ``get``/``require`` names a key it knows, checks
its value and records a :class:`~pacsman.errors.Problem` (key path first, line when known)
if the check fails.  :meth:`Section.finish` then reports the keys nobody asked for.
:func:`scan_tree` looks at the whole tree once for secrets and keys written twice.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TypeVar

from pacsman.config._values import SECRETS_FIX, Invalid, describe, suggest
from pacsman.config._yaml import LineDict, item_line, key_line
from pacsman.errors import Problem, Severity

__all__ = ["Problems", "Section", "is_secret_key", "scan_tree"]

T = TypeVar("T")

_SECRET_WORDS = frozenset(
    {"password", "passwd", "pass", "user", "username", "token", "secret", "apikey"}
)


def is_secret_key(key: str) -> bool:
    """True for keys that would hold a credential: ``password``, ``api_key``, ``xnat_user``...

    A key ending in ``_file`` (``token_file``) names the file that holds one: not a secret.
    """
    normal = key.lower().replace("-", "_")
    if normal.endswith("_file"):
        return False
    return "api_key" in normal or bool(_SECRET_WORDS.intersection(normal.split("_")))


class Problems:
    """Every problem found in one config source, in the order found."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.found: list[Problem] = []
        #: Settings that work but need a look; they never stop the config loading.
        self.warnings: list[Problem] = []

    def add(self, path: str, message: str, line: int | None) -> None:
        """Record ``path: message`` at ``line``; the top level has an empty path."""
        text = f"{path}: {message}" if path else message
        self.found.append(Problem(source=self.source, message=text, line=line))

    def warn(self, path: str, message: str, line: int | None) -> None:
        """Record the warning ``path: message`` at ``line``."""
        text = f"{path}: {message}" if path else message
        problem = Problem(self.source, text, line=line, severity=Severity.WARNING)
        self.warnings.append(problem)

    def in_file_order(self) -> list[Problem]:
        """Return the errors, then the warnings, sorted by line (no line: last)."""
        return _by_line(self.found) + _by_line(self.warnings)

    def warnings_in_file_order(self) -> tuple[Problem, ...]:
        """Return the warnings sorted by line."""
        return tuple(_by_line(self.warnings))


def _by_line(problems: list[Problem]) -> list[Problem]:
    return sorted(problems, key=lambda p: (p.line is None, p.line or 0))


class Section:
    """One mapping of the config, read key by key."""

    def __init__(
        self, problems: Problems, path: str, data: object, *, line: int | None = None
    ) -> None:
        self.problems = problems
        self.path = path
        self.line = line
        self._known: list[str] = []
        self._data: Mapping[object, object] = {}
        #: False when something other than a mapping (or nothing) was written here.
        self.is_mapping = data is None or isinstance(data, Mapping)
        if isinstance(data, Mapping):
            self._data = data
        elif data is not None:  # an empty section (``log:``) means "all defaults"
            problems.add(path, f"expected a mapping of keys, got {describe(data)}", line)

    def child(self, key: str) -> str:
        """Return the key path of ``key`` in this section."""
        return f"{self.path}.{key}" if self.path else key

    def line_of(self, key: str) -> int | None:
        """Return the line of ``key``, or of this section's own key when ``key`` is absent."""
        if isinstance(self._data, LineDict) and key in self._data.key_lines:
            return self._data.key_lines[key]
        return self.line

    def keys(self) -> list[str]:
        """Return every key written here, taking them all as known (for name -> value maps)."""
        names = [str(k) for k in self._data]
        self._known.extend(names)
        return names

    def raw(self, key: str) -> object:
        """Return the value written for ``key`` (``None`` when absent)."""
        return self._data.get(key)

    def get(self, key: str, check: Callable[[object], T], default: T) -> T:
        """Return the checked value of ``key``, or ``default`` when it is absent or wrong.

        A ``null`` value counts as absent for keys whose default is ``None``.
        """
        self._known.append(key)
        if key not in self._data or (self._data[key] is None and default is None):
            return default
        if self._data[key] is None:
            self.problems.add(
                self.child(key),
                "has no value; give one, or delete the key for the default",
                self.line_of(key),
            )
            return default
        try:
            return check(self._data[key])
        except Invalid as exc:
            self.problems.add(self.child(key), str(exc), self.line_of(key))
            return default

    def require(self, key: str, check: Callable[[object], T], example: str) -> T | None:
        """Return the checked value of a key with no default; ``None`` if absent or wrong."""
        if self._data.get(key) is None:
            self._known.append(key)
            self.problems.add(self.child(key), f"required; e.g. {example}", self.line_of(key))
            return None
        return self.get(key, check, None)

    def get_list(self, key: str, check: Callable[[object], T]) -> tuple[T, ...]:
        """Return the checked items of the list under ``key`` (empty when absent)."""
        if key in self._data and self._data[key] is None:  # ``key:`` with nothing: empty
            self._known.append(key)
            return ()
        items: Sequence[object] = self.get(key, _a_list, ())
        checked: list[T] = []
        for index, item in enumerate(items):
            try:
                checked.append(check(item))
            except Invalid as exc:
                where = item_line(items, index) or self.line_of(key)
                self.problems.add(f"{self.child(key)}[{index}]", str(exc), where)
        return tuple(checked)

    def warn(self, key: str, message: str | None) -> None:
        """Record ``message`` as a warning about ``key``; ``None`` means nothing to say."""
        if message is not None:
            self.problems.warn(self.child(key), message, self.line_of(key))

    def section(self, key: str) -> Section:
        """Return the nested section under ``key`` (all defaults when absent)."""
        self._known.append(key)
        return Section(self.problems, self.child(key), self._data.get(key), line=self.line_of(key))

    def finish(self) -> None:
        """Report every key that was not asked for, suggesting the nearest known key."""
        for key in self._data:
            name = str(key)
            if name in self._known or is_secret_key(name):
                continue
            if not isinstance(key, str):
                message = f"keys must be text, got {describe(key)}"
            else:
                near = suggest(name, self._known)
                message = f"unknown key; did you mean {near!r}?" if near else self._unknown()
            self.problems.add(self.child(name), message, self.line_of(name))

    def _unknown(self) -> str:
        return "unknown key; known keys here: " + ", ".join(dict.fromkeys(self._known))


def _a_list(value: object) -> Sequence[object]:
    if isinstance(value, list | tuple):
        return value
    raise Invalid(f"expected a list, e.g. [A, B], got {describe(value)}")


def scan_tree(
    data: object, path: str = "", *, names_under: str = "pacs"
) -> Iterator[tuple[str, str, int | None]]:
    """Yield ``(path, message, line)`` for each secret key and each key written twice.

    Keys directly under ``names_under`` are names chosen by the user, never secrets.
    """
    if isinstance(data, list | tuple):
        for index, item in enumerate(data):
            yield from scan_tree(item, f"{path}[{index}]", names_under=names_under)
        return
    if not isinstance(data, Mapping):
        return
    if isinstance(data, LineDict):
        for key, repeat, first in data.duplicates:
            message = f"written twice (first on line {first}); YAML keeps only the last, delete one"
            yield _join(path, key), message, repeat
    for key, value in data.items():
        child = _join(path, str(key))
        line = key_line(data, key) if isinstance(data, LineDict) and isinstance(key, str) else None
        if path != names_under and is_secret_key(str(key)):
            yield child, SECRETS_FIX, line
        else:
            yield from scan_tree(value, child, names_under=names_under)


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key
