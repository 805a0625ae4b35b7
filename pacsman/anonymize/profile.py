"""PS3.15 Table E.1-1 + a project profile (YAML) -> one frozen, resolved :class:`Profile`.

The table comes from the package's own data file (``pacsman/data/ps315_profile.json``, built
by ``scripts/build_ps315_profile.py``).  A project profile selects options and adds per-tag
overrides, the private-tag allow-list (Retain Safe Private) and the burned-in acceptances.
Every problem in a profile is reported at once in a :class:`~pacsman.errors.ConfigError`.

Compound actions resolve conservatively -- the original value is never kept -- and in a
way that stays valid for the IOD without IOD tables: an attribute that may be Type 2 stays
present but empty, one that may be Type 1 gets a dummy, UID references are remapped:

====== ======== ==================================================================
table  resolved  why
====== ======== ==================================================================
X/Z    Z         present-but-empty satisfies Type 2 and 3; the value is gone
X/D    D         a dummy satisfies Type 1, 2 and 3
Z/D    D         idem
X/Z/D  D         idem
X/Z/U* U         references stay resolvable (remapped with the same keyed UIDs)
====== ======== ==================================================================

When a selected option gives an action for an attribute it replaces the basic one; if two
selected options disagree, the less retentive wins (``C`` over ``K``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from enum import StrEnum
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from pacsman.anonymize._profile_rules import (
    BUILT_IN_PROFILE,
    check_burned_in,
    check_options,
    check_overrides,
    check_private_tags,
    check_relabel,
    tag_for,
    vr_for,
)
from pacsman.errors import ConfigError, Problem

__all__ = [
    "Action",
    "DateMode",
    "Option",
    "PrivateTag",
    "Profile",
    "Relabel",
    "Rule",
    "keep_list_tags",
    "load_profile",
    "tag_for",
    "type1_tags",
    "vr_for",
]

_TOP_KEYS = ("version", "name", "options", "relabel", "overrides", "private_tags", "burned_in")


class Action(StrEnum):
    """A resolved action; the values are PS3.15's letters (``R`` is pacsman's replace)."""

    KEEP = "K"
    REMOVE = "X"
    EMPTY = "Z"
    DUMMY = "D"
    REMAP = "U"
    CLEAN = "C"
    REPLACE = "R"


class Option(StrEnum):
    """The PS3.15 options a profile can select, with their CID 7050 codes.

    The two pixel options (113101 Clean Pixel Data, 113102 Clean Recognizable Visual
    Features) are absent on purpose: pacsman never alters pixel data.
    """

    CLEAN_GRAPHICS = "clean_graphics"
    CLEAN_STRUCTURED_CONTENT = "clean_structured_content"
    CLEAN_DESCRIPTORS = "clean_descriptors"
    RETAIN_LONGITUDINAL_FULL_DATES = "retain_longitudinal_full_dates"
    RETAIN_LONGITUDINAL_MODIFIED_DATES = "retain_longitudinal_modified_dates"
    RETAIN_PATIENT_CHARACTERISTICS = "retain_patient_characteristics"
    RETAIN_DEVICE_IDENTITY = "retain_device_identity"
    RETAIN_UIDS = "retain_uids"
    RETAIN_SAFE_PRIVATE = "retain_safe_private"
    RETAIN_INSTITUTION_IDENTITY = "retain_institution_identity"

    @property
    def code(self) -> tuple[str, str]:
        """``(CodeValue, CodeMeaning)`` from CID 7050 (scheme DCM)."""
        return _OPTION_CODES[self]


_OPTION_CODES: Mapping[Option, tuple[str, str]] = MappingProxyType(
    {
        Option.CLEAN_GRAPHICS: ("113103", "Clean Graphics Option"),
        Option.CLEAN_STRUCTURED_CONTENT: ("113104", "Clean Structured Content Option"),
        Option.CLEAN_DESCRIPTORS: ("113105", "Clean Descriptors Option"),
        Option.RETAIN_LONGITUDINAL_FULL_DATES: (
            "113106",
            "Retain Longitudinal Temporal Information Full Dates Option",
        ),
        Option.RETAIN_LONGITUDINAL_MODIFIED_DATES: (
            "113107",
            "Retain Longitudinal Temporal Information Modified Dates Option",
        ),
        Option.RETAIN_PATIENT_CHARACTERISTICS: ("113108", "Retain Patient Characteristics Option"),
        Option.RETAIN_DEVICE_IDENTITY: ("113109", "Retain Device Identity Option"),
        Option.RETAIN_UIDS: ("113110", "Retain UIDs Option"),
        Option.RETAIN_SAFE_PRIVATE: ("113111", "Retain Safe Private Option"),
        Option.RETAIN_INSTITUTION_IDENTITY: ("113112", "Retain Institution Identity Option"),
    }
)


class DateMode(StrEnum):
    """What happens to dates: the option chosen, or neither (basic profile)."""

    SHIFT = "shift"  # Retain Longitudinal Modified Dates: keyed per-subject shift in days
    KEEP = "keep"  # Retain Longitudinal Full Dates
    REMOVE = "remove"  # neither option: the basic profile's actions


class Relabel(StrEnum):
    """What StudyID / AccessionNumber become."""

    SESSION = "session"
    REMOVE = "remove"  # emptied (zero length), as the basic profile's Z


@dataclass(frozen=True)
class Rule:
    """One resolved action; ``value`` only for :attr:`Action.REPLACE`."""

    action: Action
    value: str | None = None


@dataclass(frozen=True, order=True)
class PrivateTag:
    """A Retain Safe Private allow-list entry: (group, private creator, element offset)."""

    group: int
    creator: str
    element: int


_CURVE_KEY = 0x50000000


@dataclass(frozen=True)
class Profile:
    """A validated, resolved project profile; build it with :func:`load_profile`."""

    name: str
    options: frozenset[Option]
    rules: Mapping[int, Rule]
    private_tags: frozenset[PrivateTag] = frozenset()
    study_id: Relabel = Relabel.SESSION
    accession_number: Relabel = Relabel.REMOVE
    accept_burned_in: frozenset[str] = frozenset()
    overridden: frozenset[int] = frozenset()
    revision: str = ""
    digest: str = ""
    _private_index: Mapping[tuple[int, str], frozenset[int]] = field(
        default_factory=dict, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        index: dict[tuple[int, str], set[int]] = {}
        for entry in self.private_tags:
            index.setdefault((entry.group, entry.creator), set()).add(entry.element)
        frozen = {key: frozenset(value) for key, value in index.items()}
        object.__setattr__(self, "_private_index", MappingProxyType(frozen))
        object.__setattr__(self, "rules", MappingProxyType(dict(self.rules)))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickle from the fields (worker processes get the profile this way)."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_private_index"}
        values["rules"] = dict(self.rules)
        return (_profile_from_fields, (values,))

    @property
    def date_mode(self) -> DateMode:
        """The date handling the options select."""
        if Option.RETAIN_LONGITUDINAL_MODIFIED_DATES in self.options:
            return DateMode.SHIFT
        if Option.RETAIN_LONGITUDINAL_FULL_DATES in self.options:
            return DateMode.KEEP
        return DateMode.REMOVE

    def rule_for(self, tag: int) -> Rule | None:
        """The rule for a public ``tag`` (repeating 50xx/60xx groups folded), or ``None``."""
        group = tag >> 16
        if group & 0xFF01 == 0x5000:
            return self.rules.get(_CURVE_KEY)
        if group & 0xFF01 == 0x6000:
            return self.rules.get(0x60000000 | (tag & 0xFFFF))
        return self.rules.get(tag)

    def keeps_private(self, group: int, creator: str, element: int) -> bool:
        """True when the allow-list retains private element offset ``element`` (0x00-0xFF)."""
        return element in self._private_index.get((group, creator), frozenset())


def _profile_from_fields(values: dict[str, Any]) -> Profile:
    return Profile(**values)


#: pacsman's own rows that came after ``pacsman/data/ps315_profile.json`` was built; merged
#: when it is read (``scripts/build_ps315_profile.py`` should carry them when it next runs).
_LATER_ROWS: Mapping[str, Mapping[str, Any]] = {
    "00409210": {
        "name": "LUT Label",
        "source": "pacsman",
        "basic": "C",
        "reason": "Type 1 in the Real World Value Mapping Item macro",
        "keyword": "LUTLabel",
        "type": 1,
    },
}


@cache
def _table() -> Mapping[str, Any]:
    text = resources.files("pacsman.data").joinpath("ps315_profile.json").read_text("utf-8")
    data: dict[str, Any] = json.loads(text)
    for tag, row in _LATER_ROWS.items():
        data["attributes"].setdefault(tag, dict(row))
    return data


_COMPOUND = {"X/Z": "Z", "X/D": "D", "Z/D": "D", "X/Z/D": "D", "X/Z/U*": "U"}


def resolve(row: Mapping[str, Any], options: frozenset[Option]) -> Action:
    """Resolve one table row for the selected ``options`` (see the module docstring)."""
    chosen = {code for name, code in row.get("options", {}).items() if Option(name) in options}
    if chosen:
        return Action.CLEAN if "C" in chosen else Action.KEEP
    basic: str = row["basic"]
    return Action(_COMPOUND.get(basic, basic))


def _resolved_rules(options: frozenset[Option]) -> dict[int, Rule]:
    table = _table()
    rules = {int(tag, 16): Rule(resolve(row, options)) for tag, row in table["attributes"].items()}
    for mask, row in table["masks"].items():
        key = _CURVE_KEY if mask.startswith("50") else int(mask.replace("xx", "00"), 16)
        rules[key] = Rule(resolve(row, options))
    for tag, row in table.get("required", {}).items():  # Type 1/2 somewhere: never dropped
        if rules[int(tag, 16)].action is Action.REMOVE:
            rules[int(tag, 16)] = Rule(Action(row["action"]))
    return rules


@cache
def keep_list_tags() -> frozenset[int]:
    """pacsman's keep-list: attributes outside the table kept as they are (devices...)."""
    rows = _table()["attributes"].items()
    return frozenset(
        int(tag, 16) for tag, row in rows if row["source"] == "pacsman" and row["basic"] == "K"
    )


@cache
def type1_tags() -> frozenset[int]:
    """Attributes outside the table that are Type 1 in an IOD: cleaned, never left empty."""
    rows = _table()["attributes"].items()
    return frozenset(int(tag, 16) for tag, row in rows if row.get("type") == 1)


def _problem(source: str, key: str, message: str) -> Problem:
    return Problem(source=source, message=f"key '{key}': {message}")


def _check_top(data: object, source: str) -> list[Problem]:
    if not isinstance(data, Mapping):
        return [Problem(source, "the profile must be a YAML mapping of keys such as 'options'")]
    problems = [
        _problem(source, str(key), f"unknown key; use one of: {', '.join(_TOP_KEYS)}")
        for key in data
        if key not in _TOP_KEYS
    ]
    if data.get("version", 1) != 1:
        problems.append(_problem(source, "version", f"{data['version']!r} is not 1; use 1"))
    name = data.get("name", "custom")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,32}", name):
        problems.append(_problem(source, "name", f"{name!r} must be 1-32 letters, digits, _ . -"))
    return problems


def _build(data: Mapping[str, Any], source: str) -> Profile:
    problems = _check_top(data, source)
    options, found = check_options(data.get("options", []), source, [o.value for o in Option])
    problems += found
    selected = frozenset(Option(name) for name in options)
    overrides, found = check_overrides(data.get("overrides", {}), source)
    problems += found
    private, found = check_private_tags(
        data.get("private_tags", []), source, Option.RETAIN_SAFE_PRIVATE in selected
    )
    problems += found
    relabel, found = check_relabel(data.get("relabel", {}), source)
    problems += found
    accept, found = check_burned_in(data.get("burned_in", {}), source)
    problems += found
    if problems:
        raise ConfigError(problems)
    rules = _resolved_rules(selected)
    for tag, (action, value) in overrides.items():
        rules[tag] = Rule(Action(action), value)
    return Profile(
        name=str(data.get("name", "custom")),
        options=selected,
        rules=rules,
        private_tags=frozenset(PrivateTag(*entry) for entry in private),
        study_id=Relabel(relabel.get("StudyID", "session")),
        accession_number=Relabel(relabel.get("AccessionNumber", "remove")),
        accept_burned_in=frozenset(accept),
        overridden=frozenset(overrides),
        revision=f"{_table()['revision']}+{_table()['additions_revision']}",
        digest=_digest(data),
    )


def _digest(data: Mapping[str, Any]) -> str:
    canonical = json.dumps(data, sort_keys=True, default=str, ensure_ascii=True)
    payload = f"{_table()['revision']}|{_table()['additions_revision']}|{canonical}"
    return hashlib.sha256(payload.encode("ascii")).hexdigest()[:12]


def load_profile(path: Path | None = None) -> Profile:
    """Load and resolve a project profile; ``None`` gives the built-in default.

    The built-in default is the basic profile + Retain Longitudinal Modified Dates (keyed
    per-subject date shift), with SeriesDescription cleaned rather than removed (XNAT
    derives scan types from it), StudyID set to the session label, AccessionNumber
    emptied, no private tag kept and no burned-in risk accepted.

    Raises:
        ConfigError: the file cannot be read or parsed, or has any invalid key; every
            problem found is listed.
    """
    if path is None:
        return _build(BUILT_IN_PROFILE, "<built-in default profile>")
    source = str(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError([Problem(source, f"cannot read the profile: {exc.strerror}")]) from exc
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = Problem(source, f"not valid YAML: {getattr(exc, 'problem', exc)}", line=line)
        raise ConfigError([problem]) from exc
    return _build(data if data is not None else {}, source)
