"""Validation of each key of a project profile; every check returns all its problems."""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date, datetime
from functools import lru_cache
from typing import Any

from pydicom import config as pydicom_config
from pydicom.datadict import dictionary_VR, keyword_for_tag, tag_for_keyword
from pydicom.valuerep import validate_value

from pacsman.errors import Problem

__all__ = [
    "BUILT_IN_PROFILE",
    "check_burned_in",
    "check_options",
    "check_overrides",
    "check_private_tags",
    "check_relabel",
    "effective_vr",
    "tag_for",
    "vr_for",
]

#: The built-in default profile, validated like any file (see ``load_profile``).
BUILT_IN_PROFILE: Mapping[str, Any] = {
    "version": 1,
    "name": "pacsman-default",
    "options": ["retain_longitudinal_modified_dates"],
    "relabel": {"StudyID": "session", "AccessionNumber": "remove"},
    "overrides": {"SeriesDescription": "clean"},
}

_PIXEL_OPTIONS = ("clean_pixel_data", "clean_recognizable_visual_features")
_DATE_OPTIONS = {"retain_longitudinal_full_dates", "retain_longitudinal_modified_dates"}
_OVERRIDE_ACTIONS = {"keep": "K", "remove": "X", "clean": "C"}
_REPLACEABLE_VRS = frozenset(
    {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC"}
    | {"UR", "UT"}  # text VRs only
)
#: Tags a profile may not override, with the fix to offer.
_NOT_OVERRIDABLE = {
    "PatientName": "it always becomes the subject label",
    "PatientID": "it always becomes the subject label",
    "StudyID": "use relabel.StudyID",
    "AccessionNumber": "use relabel.AccessionNumber",
    "PatientIdentityRemoved": "pacsman sets it",
    "DeidentificationMethod": "pacsman sets it",
    "DeidentificationMethodCodeSequence": "pacsman sets it",
    "LongitudinalTemporalInformationModified": "pacsman sets it from the date option",
}


def _problem(source: str, key: str, message: str) -> Problem:
    return Problem(source=source, message=f"key '{key}': {message}")


@lru_cache(maxsize=8192)
def vr_for(tag: int) -> str:
    """The dictionary VR of a public ``tag``; ``"UN"`` when the dictionary does not know it."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def effective_vr(tag: int, vr: str | None) -> str:
    """The VR an element is handled with: the file's, or the dictionary's for none or UN.

    pydicom reads a UN element of a known public tag with the dictionary VR, so pacsman
    treats it as such too.
    """
    if vr is None or vr == "UN":
        return vr_for(tag)
    return vr


def tag_for(keyword_or_tag: str) -> int | None:
    """``SeriesDescription``, ``(0008,103E)`` or ``0008103E`` -> the tag, else ``None``."""
    text = keyword_or_tag.strip()
    match = re.fullmatch(r"\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?", text)
    if match:
        return int(match.group(1) + match.group(2), 16)
    return tag_for_keyword(text)


def check_options(raw: object, source: str, known: list[str]) -> tuple[list[str], list[Problem]]:
    """Validate ``options``: a list of PS3.15 option names, at most one date option."""
    if not isinstance(raw, list):
        return [], [_problem(source, "options", "must be a list of option names")]
    names: list[str] = []
    problems: list[Problem] = []
    choices = ", ".join(known)
    for index, name in enumerate(raw):
        key = f"options[{index}]"
        if name in _PIXEL_OPTIONS:
            fix = "pacsman never alters pixel data; accept risky images with burned_in.accept"
            problems.append(_problem(source, key, f"{name!r} is not supported: {fix}"))
        elif name not in known:
            problems.append(
                _problem(source, key, f"{name!r} is not a PS3.15 option; use one of: {choices}")
            )
        else:
            names.append(name)
    if set(names) >= _DATE_OPTIONS:
        fix = "choose one of retain_longitudinal_full_dates, retain_longitudinal_modified_dates"
        problems.append(_problem(source, "options", f"both date options are selected; {fix}"))
    return names, problems


def _override_tag(key: object, source: str) -> tuple[int | None, list[Problem]]:
    where = f"overrides.{key}"
    tag = tag_for(key) if isinstance(key, str) else None
    if tag is None:
        fix = "use a DICOM keyword such as SeriesDescription or a tag such as (0008,103E)"
        return None, [_problem(source, where, f"{key!r} is not a DICOM attribute; {fix}")]
    if tag >> 16 & 1:
        fix = "list private elements under private_tags"
        return None, [_problem(source, where, f"private tags cannot be overridden; {fix}")]
    if tag >> 16 == 0x0002:
        return None, [_problem(source, where, "the file meta is always rewritten by pacsman")]
    reason = _NOT_OVERRIDABLE.get(keyword_for_tag(tag))
    if reason is not None:
        return None, [_problem(source, where, f"cannot be overridden: {reason}")]
    if vr_for(tag) == "UI":
        fix = "UIDs are all remapped or, with option retain_uids, all kept"
        return None, [_problem(source, where, f"cannot be overridden: {fix}")]
    return tag, []


def _replacement(tag: int, value: object, source: str, where: str) -> list[Problem]:
    vr = vr_for(tag)
    if vr not in _REPLACEABLE_VRS:
        return [_problem(source, where, f"replace works on text VRs only, not {vr}")]
    if isinstance(value, date | datetime):
        return [_problem(source, where, f"YAML read {value} as a date; quote it in {vr} form")]
    if not isinstance(value, str | int | float):
        return [_problem(source, where, f"{value!r} must be a single text value")]
    try:
        validate_value(vr, str(value), pydicom_config.RAISE)
    except ValueError as exc:
        return [_problem(source, where, f"{value!r} is not a valid {vr}: {exc}")]
    return []


def check_overrides(
    raw: object, source: str
) -> tuple[dict[int, tuple[str, str | None]], list[Problem]]:
    """Validate ``overrides``: ``Tag: keep|remove|clean`` or ``Tag: {replace: value}``."""
    if not isinstance(raw, Mapping):
        return {}, [_problem(source, "overrides", "must be a mapping of attribute: action")]
    result: dict[int, tuple[str, str | None]] = {}
    problems: list[Problem] = []
    for key, action in raw.items():
        tag, found = _override_tag(key, source)
        problems += found
        where = f"overrides.{key}"
        if tag is not None and tag in result:
            problems.append(_problem(source, where, "names an attribute already listed; keep one"))
        if isinstance(action, Mapping) and set(action) == {"replace"}:
            found = _replacement(tag, action["replace"], source, where) if tag else []
            problems += found
            if tag is not None and not found:
                result[tag] = ("R", str(action["replace"]))
        elif action in _OVERRIDE_ACTIONS:
            if tag is not None:
                result[tag] = (_OVERRIDE_ACTIONS[action], None)
        else:
            fix = "use keep, remove, clean or {replace: VALUE}"
            problems.append(_problem(source, where, f"{action!r} is not an action; {fix}"))
    return result, problems


def _private_entry(entry: object, source: str, where: str) -> tuple[int, str, int] | Problem:
    if not isinstance(entry, Mapping) or set(entry) != {"group", "creator", "element"}:
        return _problem(source, where, "must be a mapping with group, creator and element")
    group, creator, element = entry["group"], entry["creator"], entry["element"]
    if not (isinstance(group, str) and re.fullmatch(r"[0-9A-Fa-f]{4}", group)):
        return _problem(source, f"{where}.group", f"{group!r}: quote 4 hex digits, e.g. '0029'")
    if int(group, 16) % 2 == 0 or int(group, 16) <= 0x0007:
        return _problem(source, f"{where}.group", f"'{group}' is not a private (odd) group")
    if not (isinstance(creator, str) and 0 < len(creator.strip()) <= 64):
        return _problem(source, f"{where}.creator", f"{creator!r}: give the private creator")
    if not (isinstance(element, str) and re.fullmatch(r"[0-9A-Fa-f]{2}", element)):
        fix = "quote the element offset in the block as 2 hex digits, e.g. '10' for (0029,xx10)"
        return _problem(source, f"{where}.element", f"{element!r}: {fix}")
    return int(group, 16), creator.strip(), int(element, 16)


def check_private_tags(
    raw: object, source: str, option_selected: bool
) -> tuple[list[tuple[int, str, int]], list[Problem]]:
    """Validate ``private_tags``: the Retain Safe Private allow-list."""
    if not isinstance(raw, list):
        return [], [_problem(source, "private_tags", "must be a list of entries")]
    entries: list[tuple[int, str, int]] = []
    problems: list[Problem] = []
    for index, entry in enumerate(raw):
        checked = _private_entry(entry, source, f"private_tags[{index}]")
        if isinstance(checked, Problem):
            problems.append(checked)
        else:
            entries.append(checked)
    if raw and not option_selected:
        fix = "add retain_safe_private to options, or remove private_tags"
        problems.append(_problem(source, "private_tags", f"listed without the option; {fix}"))
    return entries, problems


def check_relabel(raw: object, source: str) -> tuple[dict[str, str], list[Problem]]:
    """Validate ``relabel``: StudyID / AccessionNumber -> ``session`` or ``remove``."""
    if not isinstance(raw, Mapping):
        return {}, [_problem(source, "relabel", "must be a mapping")]
    problems: list[Problem] = []
    for key, value in raw.items():
        if key not in ("StudyID", "AccessionNumber"):
            problems.append(_problem(source, f"relabel.{key}", "use StudyID or AccessionNumber"))
        elif value not in ("session", "remove"):
            problems.append(
                _problem(source, f"relabel.{key}", f"{value!r}: use 'session' or 'remove'")
            )
    return {str(k): str(v) for k, v in raw.items()}, problems


def check_burned_in(raw: object, source: str) -> tuple[set[str], list[Problem]]:
    """Validate ``burned_in``: ``{accept: [US, SC, ...]}`` (modalities; SC = secondary capture)."""
    if not isinstance(raw, Mapping) or not set(raw) <= {"accept"}:
        return set(), [_problem(source, "burned_in", "must be a mapping with the key 'accept'")]
    accept = raw.get("accept", [])
    if not isinstance(accept, list):
        return set(), [_problem(source, "burned_in.accept", "must be a list of modalities")]
    problems = [
        _problem(source, f"burned_in.accept[{i}]", f"{m!r}: use a modality code such as US")
        for i, m in enumerate(accept)
        if not (isinstance(m, str) and re.fullmatch(r"[A-Z0-9]{2,16}", m))
    ]
    return {m for m in accept if isinstance(m, str)}, problems
