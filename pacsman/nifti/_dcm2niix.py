"""The dcm2niix binary from its PyPI wheel: found, versioned and run without a shell.

The wheel ``dcm2niix`` installs the compiled binary as ``dcm2niix/dcm2niix`` inside its Python
package (its ``bin/dcm2niix`` is only a Python launcher for it), so pacsman finds it through
the package, never through PATH: the version recorded is the version that ran.

dcm2niix prints file and folder names; its output is never logged line by line.  What a
reason keeps (:func:`tail`) is its last warning or error lines with every path replaced.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

from pacsman.errors import FatalError

__all__ = [
    "OPTIONS",
    "PINNED",
    "Run",
    "binary",
    "exit_meaning",
    "output_name",
    "run",
    "tail",
    "version",
]

#: The wheel pacsman is tested with (pyproject.toml pins it).
PINNED = "1.0.20260724"
_FIX = f"run 'pip install dcm2niix=={PINNED}'"

#: Every option but -f/-o: defaults file ignored (-g i, so ~/.dcm2nii.ini changes nothing),
#: gzip, BIDS sidecar, sidecar anonymized, only the files of the given folder (-d 0).
OPTIONS: tuple[str, ...] = ("-g", "i", "-z", "y", "-b", "y", "-ba", "y", "-d", "0")

#: dcm2niix's exit codes (kEXIT_* in its nii_dicom.h), in words.
_EXITS = {
    1: "unspecified error",
    2: "no valid DICOM image found",
    4: "a corrupt DICOM file was found",
    5: "the input folder is invalid",
    6: "the output folder is invalid",
    7: "the output folder is read-only",
    8: "partial conversion: some images were converted, some were not",
    9: "a file could not be renamed",
    10: "incomplete volumes were found",
    11: "nominal: nothing to do",
    12: "an invalid option: report it as a pacsman bug",
}
_VERSION = re.compile(r"v\d+\.\d+\.\d{8}\w*")
_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\][^\s'\"]*")
_TAIL_LINES, _TAIL_CHARS = 3, 200


@dataclass(frozen=True)
class Run:
    """One run of dcm2niix: its exit code and its (undecoded) output."""

    returncode: int | None  # None: killed after the timeout
    output: str


def binary() -> Path:
    """The dcm2niix binary of the installed wheel.

    Raises:
        FatalError: the wheel is not installed, or its binary is missing or not executable.
    """
    spec = importlib.util.find_spec("dcm2niix")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    if not folders:
        raise FatalError(f"dcm2niix: the Python package 'dcm2niix' is not installed; {_FIX}")
    path = Path(folders[0]) / "dcm2niix"
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise FatalError(
            f"dcm2niix: the wheel's binary {path} is missing or not executable; "
            f"{_FIX} --force-reinstall"
        )
    return path


@lru_cache(maxsize=1)
def version() -> str:
    """The binary's own version, e.g. ``v1.0.20260724`` (asked once per process).

    Raises:
        FatalError: the binary is missing, or does not answer with a version.
    """
    path = binary()
    try:
        done = subprocess.run(
            [str(path), "--version"], capture_output=True, timeout=30, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise FatalError(f"dcm2niix: {path} --version did not run ({exc}); {_FIX}") from None
    found = _VERSION.search(done.stdout.decode("utf-8", "replace"))
    if found is None:
        raise FatalError(f"dcm2niix: {path} --version printed no version; {_FIX}")
    return found.group(0)


@lru_cache(maxsize=1)
def wheel_version() -> str:
    """The installed wheel's version (``1.0.20260724``), or ``"unknown"``."""
    try:
        return metadata.version("dcm2niix")
    except metadata.PackageNotFoundError:
        return "unknown"


def output_name(series_number: str) -> str:
    """The ``-f`` name: fixed, carrying no PHI (``series-<SeriesNumber>``, alphanumeric)."""
    number = re.sub(r"[^0-9A-Za-z]", "", series_number) or "0"
    return f"series-{number[:16]}"


def run(series_dir: Path, out_dir: Path, name: str, *, timeout: float) -> Run:
    """Run dcm2niix on the DICOM files directly in ``series_dir``, writing into ``out_dir``.

    Raises:
        FatalError: the binary is missing (see :func:`binary`).
    """
    argv = [str(binary()), *OPTIONS, "-f", name, "-o", str(out_dir), str(series_dir)]
    try:
        done = subprocess.run(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        return Run(None, _text(exc.stdout))
    return Run(done.returncode, _text(done.stdout))


def _text(data: bytes | str | None) -> str:
    if data is None:
        return ""
    return data if isinstance(data, str) else data.decode("utf-8", "replace")


def exit_meaning(code: int) -> str:
    """dcm2niix's exit ``code`` in words."""
    return _EXITS.get(code, "an unknown error")


def tail(output: str, known: Sequence[Path] = ()) -> str:
    """The last warning/error lines of ``output`` (else its last lines), paths replaced.

    Each of ``known`` becomes ``<input>``/``<output>`` style placeholders first; any other
    absolute path becomes ``<path>``.
    """
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    flagged = [line for line in lines if re.match(r"(?i)(warning|error)", line)]
    chosen = (flagged or lines)[-_TAIL_LINES:]
    scrubbed = [_scrub(line, known)[:_TAIL_CHARS] for line in chosen]
    return " | ".join(scrubbed)


def _scrub(line: str, known: Sequence[Path]) -> str:
    for index, path in enumerate(known):
        line = line.replace(str(path), f"<folder{index + 1}>")
    return _PATH.sub("<path>", line)
