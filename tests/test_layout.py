"""The house rules of the code layout (issue 9), checked on the source itself.

* no module imports another package's ``_private`` module;
* ``pynetdicom`` is imported only under ``pacsman/dicom/`` (and by the test peers);
* pynetdicom and pydicom internals are touched only in ``pacsman/dicom/hooks.py``;
* production code never imports ``pacsman.testing``;
* one copy of each rule and constant: the XNAT label rule, the implementation class UID.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "pacsman"
HOOKS = PACKAGE / "dicom" / "hooks.py"
#: Internals pacsman is known to touch; each must appear in hooks.py and nowhere else.
INTERNALS = (
    "_is_transport_event",
    "_run_loop_delay",
    "_read_pdu_data",
    "_accepted_cx",
    "_idle_timer",
    "_create_socket",
    "_dataset_path",
    "get_msg",
    "current_state",
    "to_provider_queue",
    "event_queue",
    "receive_primitive",
    "STORE_SEND_CHUNKED_DATASET",
    "LOG_REQUEST_IDENTIFIERS",
    "LOG_HANDLER_LEVEL",
    "_reactor_checkpoint",
    "msg_queue",
    "to_user_queue",
    "_create_association",
    "_servers",
)


def _modules(*, include_testing: bool = False) -> Iterator[Path]:
    for path in sorted(PACKAGE.rglob("*.py")):
        if include_testing or "testing" not in path.relative_to(PACKAGE).parts:
            yield path


def _package_of(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1])


def _imported(path: Path) -> Iterator[str]:
    for node in ast.walk(ast.parse(path.read_text("utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            yield node.module
            yield from (f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def _private_owner(module: str) -> str | None:
    """The package a ``_private`` module of ``module`` belongs to, if it names one."""
    parts = module.split(".")
    for index, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            return ".".join(parts[:index])
    return None


def test_no_module_imports_another_packages_private_module() -> None:
    offenders = []
    for path in _modules(include_testing=True):
        own = _package_of(path)
        for module in _imported(path):
            owner = _private_owner(module)
            if module.startswith("pacsman") and owner is not None and owner != own:
                offenders.append(f"{path.relative_to(PACKAGE)} imports {module}")
    assert not offenders, "\n".join(offenders)


def test_pynetdicom_is_imported_only_under_dicom_and_testing() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in _modules()
        for module in _imported(path)
        if module.split(".")[0] == "pynetdicom" and path.relative_to(PACKAGE).parts[0] != "dicom"
    ]
    assert not offenders, "\n".join(offenders)


def test_production_code_never_imports_the_test_peers() -> None:
    offenders = [
        f"{path.relative_to(PACKAGE)} imports {module}"
        for path in _modules()
        for module in _imported(path)
        if module.startswith("pacsman.testing")
    ]
    assert not offenders, "\n".join(offenders)


def _code_names(path: Path) -> set[str]:
    """Names, attributes, keywords and non-docstring strings in ``path``: code, not prose."""
    tree = ast.parse(path.read_text("utf-8"))
    docstrings = _docstrings(tree)
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            names.add(node.attr)
        elif isinstance(node, ast.Name):
            names.add(node.id)
        elif isinstance(node, ast.keyword) and node.arg:
            names.add(node.arg)
        elif isinstance(node, ast.alias):
            names.add(node.name.split(".")[-1])
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            names.add(node.value)
    return names


@pytest.mark.parametrize("name", INTERNALS)
def test_internals_are_touched_only_in_hooks(name: str) -> None:
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if path != HOOKS and name in _code_names(path)
    ]
    assert not offenders, f"{name} outside dicom/hooks.py: {offenders}"
    assert name in _code_names(HOOKS), f"{name} is not in dicom/hooks.py"


def test_pydicom_settings_are_never_flipped() -> None:
    """Validation is relaxed per element (hooks.set_unvalidated), never process-wide."""
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if {"reading_validation_mode", "writing_validation_mode"} & _code_names(path)
    ]
    assert not offenders, offenders


def test_pynetdicom_private_modules_and_fsm_names_only_in_hooks() -> None:
    private = re.compile(r"\b(?:pynetdicom|pydicom)\._\w+|from (?:pynetdicom|pydicom) import _\w+")
    fsm = re.compile(r"[\"']Sta\d+[\"']|[\"']Evt\d+[\"']")
    offenders = [
        str(path.relative_to(PACKAGE))
        for path in _modules()
        if path != HOOKS and (private.search(path.read_text()) or fsm.search(path.read_text()))
    ]
    assert not offenders, offenders


@pytest.mark.parametrize(
    "literal",
    [
        r"[A-Za-z0-9_-]{1,64}",  # XNAT's label rule
        "2.25.229348925104640523125455290358931536617",  # pacsman's implementation class UID
    ],
)
def test_one_copy_of_each_rule_and_constant(literal: str) -> None:
    defining = [str(path.relative_to(PACKAGE)) for path in _modules() if _defines(path, literal)]
    assert len(defining) == 1, defining


def _docstrings(tree: ast.Module) -> set[int]:
    holders = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, holders) and node.body and isinstance(node.body[0], ast.Expr):
            found.add(id(node.body[0].value))
    return found


def _defines(path: Path, literal: str) -> bool:
    """True if ``path`` holds ``literal`` in a string that is code, not documentation."""
    tree = ast.parse(path.read_text("utf-8"))
    docstrings = _docstrings(tree)
    return any(
        isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and literal in node.value
        and id(node) not in docstrings
        for node in ast.walk(tree)
    )


def test_top_level_shows_the_stages() -> None:
    entries = sorted(
        p.name for p in PACKAGE.iterdir() if p.name not in {"__pycache__", "py.typed", "data"}
    )
    # service/ (issue 13) was the 21st; nifti/ (a stage after anonymize) and dqr/ (XNAT pulls
    # from the PACS itself, issue 16) the 22nd and 23rd
    assert len(entries) <= 23, entries
    assert not [name for name in entries if name.startswith("_") and not name.startswith("__")]
