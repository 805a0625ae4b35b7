"""The BIDS mapping file: ordered rules from SeriesDescription patterns to BIDS names,
validated once, every problem named (file, line, rule number, key, value, fix).

    version: 1
    rules:
      - match: "mprage|t1.*(sag|3d)"    # a regular expression, case-insensitive, searched
        datatype: anat                   # anat, func, dwi, fmap, perf
        suffix: T1w                      # a suffix BIDS allows for that datatype
        acq: mprage                      # optional labels: acq, task (func needs it), dir
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pacsman.errors import ConfigError, Problem

__all__ = ["DATATYPES", "BidsMapping", "BidsRule", "bids_mapping"]

#: The datatypes a rule may name, with the suffixes BIDS (1.10) allows in each.
DATATYPES: Mapping[str, frozenset[str]] = {
    "anat": frozenset(
        [
            "T1w",
            "T2w",
            "PDw",
            "T2starw",
            "FLAIR",
            "inplaneT1",
            "inplaneT2",
            "PDT2",
            "angio",
            "T1map",
            "T2map",
            "T2starmap",
            "R1map",
            "R2map",
            "R2starmap",
            "PDmap",
            "MTRmap",
            "MTsat",
            "UNIT1",
            "T1rho",
            "MWFmap",
            "MTVmap",
            "Chimap",
            "S0map",
            "M0map",
        ]
    ),
    "func": frozenset(["bold", "cbv", "sbref", "phase", "noRF"]),
    "dwi": frozenset(["dwi", "sbref"]),
    "fmap": frozenset(
        [
            "phasediff",
            "phase1",
            "phase2",
            "magnitude1",
            "magnitude2",
            "magnitude",
            "fieldmap",
            "epi",
            "TB1map",
            "RB1map",
        ]
    ),
    "perf": frozenset(["asl", "m0scan"]),
}
_LABEL = re.compile(r"[A-Za-z0-9]+")
_LABELS = ("acq", "task", "dir")
_KEYS = ("match", "datatype", "suffix", *_LABELS)
_Say = Callable[[str], Problem]  # a message -> the Problem naming file, line and rule


@dataclass(frozen=True)
class BidsRule:
    """One rule: series whose SeriesDescription ``pattern`` finds go to ``datatype``/``suffix``."""

    number: int  # 1-based, in file order: the first rule that matches wins
    pattern: re.Pattern[str]
    datatype: str
    suffix: str
    acq: str | None = None
    task: str | None = None
    dir: str | None = None


@dataclass(frozen=True)
class BidsMapping:
    """The validated rules of one mapping file."""

    source: str
    rules: tuple[BidsRule, ...]

    def match(self, series_description: str) -> BidsRule | None:
        """The first rule whose pattern is found in ``series_description``, else ``None``."""
        for rule in self.rules:
            if rule.pattern.search(series_description):
                return rule
        return None


def bids_mapping(path: Path) -> BidsMapping:
    """Load and validate the mapping file at ``path``.

    Raises:
        ConfigError: the file cannot be read, is not YAML, or has any invalid rule or key;
            every problem is listed, each with the fix.
    """
    source = str(path)
    try:
        text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        lines = _rule_lines(text)
    except OSError as exc:
        problem = Problem(source, f"cannot read the BIDS mapping: {exc.strerror}; check the path")
        raise ConfigError([problem]) from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = Problem(
            source,
            f"not valid YAML: {getattr(exc, 'problem', exc)}; fix the syntax",
            line=mark.line + 1 if mark is not None else None,
        )
        raise ConfigError([problem]) from None
    return _build(data, source, lines)


def _rule_lines(text: str) -> list[int]:
    """The 1-based line of each item of ``rules`` (empty when there is no such list)."""
    node = yaml.compose(text)
    if not isinstance(node, yaml.MappingNode):
        return []
    for key, value in node.value:
        if getattr(key, "value", None) == "rules" and isinstance(value, yaml.SequenceNode):
            return [item.start_mark.line + 1 for item in value.value]
    return []


def _build(data: Any, source: str, lines: list[int]) -> BidsMapping:
    problems: list[Problem] = []
    if not isinstance(data, dict) or not isinstance(data.get("rules"), list):
        fix = "write 'rules:' followed by a list of {match, datatype, suffix} entries"
        raise ConfigError([Problem(source, f"no list of rules; {fix}")])
    for key in data:
        if key not in ("version", "rules"):
            problems.append(Problem(source, f"unknown key {key!r}; use 'version' and 'rules'"))
    if data.get("version", 1) != 1:
        problems.append(Problem(source, f"version {data['version']!r} is not 1; use 1"))
    rules = []
    for index, item in enumerate(data["rules"]):
        line = lines[index] if index < len(lines) else None
        rule, found = _rule(index + 1, item, source, line)
        problems += found
        if rule is not None:
            rules.append(rule)
    if not data["rules"]:
        problems.append(Problem(source, "'rules' is empty; add at least one rule"))
    if problems:
        raise ConfigError(problems)
    return BidsMapping(source, tuple(rules))


def _rule(
    number: int, item: Any, source: str, line: int | None
) -> tuple[BidsRule | None, list[Problem]]:
    def problem(message: str) -> Problem:
        return Problem(source, f"rule {number}: {message}", line=line)

    if not isinstance(item, dict):
        return None, [problem(f"{item!r} is not a mapping; write match:, datatype:, suffix:")]
    found = [
        problem(f"unknown key {key!r}; use {', '.join(_KEYS)}") for key in item if key not in _KEYS
    ]
    found += [problem(f"key {key!r} is missing; add it") for key in _KEYS[:3] if key not in item]
    if found:
        return None, found
    pattern, more = _pattern(item["match"], problem)
    found += more
    found += _datatype_suffix(item["datatype"], item["suffix"], problem)
    for key in _LABELS:
        value = item.get(key)
        if value is not None and not (isinstance(value, str) and _LABEL.fullmatch(value)):
            found.append(
                problem(f"key {key!r}: {value!r} is not a BIDS label; use letters and digits")
            )
    if item["datatype"] == "func" and item.get("task") is None:
        found.append(problem("key 'task' is missing: BIDS func files need task-<label>; add it"))
    if found or pattern is None:
        return None, found
    labels = {key: item.get(key) for key in _LABELS}
    return BidsRule(number, pattern, item["datatype"], item["suffix"], **labels), []


def _pattern(value: Any, problem: _Say) -> tuple[re.Pattern[str] | None, list[Problem]]:
    if not isinstance(value, str) or not value:
        return None, [problem(f"key 'match': {value!r} is not a regular expression; quote one")]
    try:
        return re.compile(value, re.IGNORECASE), []
    except re.error as exc:
        return None, [problem(f"key 'match': {value!r} is not a valid regular expression ({exc})")]


def _datatype_suffix(datatype: Any, suffix: Any, problem: _Say) -> list[Problem]:
    if datatype not in DATATYPES:
        names = ", ".join(sorted(DATATYPES))
        return [problem(f"key 'datatype': {datatype!r} is not a BIDS datatype; use one of {names}")]
    if suffix not in DATATYPES[datatype]:
        names = ", ".join(sorted(DATATYPES[datatype]))
        return [
            problem(f"key 'suffix': {suffix!r} is not a BIDS {datatype} suffix; use one of {names}")
        ]
    return []
