"""Series folders that already hold DICOM files before a run retrieves them (private).

When a series is about to get its folder recorded and that folder already holds files:

* a run of this job store recorded the same folder for the same series before (another
  run, or this one before another head node took the study over): the files are known, and
  the series is recorded COMPLETE at once when their count equals this run's C-FIND count
  (else it is retrieved, keeping the files already there);
* no run did (the job store was lost, emptied or replaced): the run stops before any C-MOVE
  and names the folders, unless ``--adopt-existing`` (adopt those whose count equals C-FIND,
  retrieve the rest) or ``--new-run`` (retrieve them all again, on purpose) is given.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import structlog

from pacsman.errors import InputError
from pacsman.jobstore import JobStore, Run, SeriesPlace
from pacsman.models import ItemState

__all__ = ["settle_series_on_disk"]

_log = structlog.get_logger("pacsman.pipeline")

_SHOWN = 10  # folders named in the refusal; the rest are counted
_MAGIC_AT, _MAGIC = 128, b"DICM"

Found = tuple[SeriesPlace, Path, int]


def settle_series_on_disk(
    store: JobStore,
    run: Run,
    placed: Sequence[tuple[SeriesPlace, Path]],
    *,
    adopt: bool,
    new_run: bool,
) -> int:
    """Check the folders ``placed`` series are about to get; return how many were adopted.

    Raises:
        InputError: folders hold files no run of the job store put there, and neither
            ``adopt`` nor ``new_run`` is set; nothing was retrieved or recorded.
    """
    found = [
        (series, folder, count)
        for series, folder in placed
        if series.state is ItemState.QUERIED and (count := instances_on_disk(folder))
    ]
    if not found:
        return 0
    known = store.placed_before([(series, folder) for series, folder, _ in found])
    unknown = [f for f in found if f[0].series_instance_uid not in known]
    if unknown and not (adopt or new_run):
        raise InputError(_refusal(store.where, unknown))
    if adopt:
        candidates = found
    else:
        candidates = [] if new_run else [f for f in found if f[0].series_instance_uid in known]
    adopted = [(s, n, _adopted_detail(n)) for s, _, n in candidates if s.expected_instances == n]
    for series, _, count in candidates:
        if series.expected_instances != count:
            _log.info(
                "series_not_adopted",
                pacs=series.pacs,
                series_uid=series.series_instance_uid,
                on_disk=count,
                expected=series.expected_instances,
            )
    if adopted:
        store.record_adopted(run, adopted)
        _log.info("series_adopted", series=len(adopted), found_on_disk=len(found))
    return len(adopted)


def instances_on_disk(folder: Path) -> int:
    """How many DICOM Part 10 files (``*.dcm``, not hidden) ``folder`` holds; 0 if none."""
    try:
        names = [e.path for e in _entries(folder) if _is_instance_name(e.name) and e.is_file()]
    except (FileNotFoundError, NotADirectoryError):
        return 0
    return sum(1 for name in names if _is_part10(name))


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    with os.scandir(folder) as entries:
        return list(entries)


def _is_instance_name(name: str) -> bool:
    return name.endswith(".dcm") and not name.startswith(".")


def _is_part10(path: str) -> bool:
    try:
        with open(path, "rb") as stream:
            head = stream.read(_MAGIC_AT + len(_MAGIC))
    except OSError:
        return False
    return head[_MAGIC_AT:] == _MAGIC


def _adopted_detail(count: int) -> str:
    return f"adopted from disk: {count} instance(s), as many as the PACS's C-FIND count"


def _refusal(jobstore: Path | str, unknown: list[Found]) -> str:
    shown = "\n".join(f"  {folder} ({count} file(s))" for _, folder, count in unknown[:_SHOWN])
    more = f"\n  ... and {len(unknown) - _SHOWN} more" if len(unknown) > _SHOWN else ""
    return (
        f"{len(unknown)} series folder(s) already hold DICOM files that the job store "
        f"{jobstore} does not know about (was it deleted, emptied or replaced?):\n"
        f"{shown}{more}\n"
        "Nothing was retrieved. To keep them, run the same command with --adopt-existing: "
        "a folder holding as many instances as the PACS's C-FIND count is recorded COMPLETE "
        "and not retrieved again; the others are retrieved, keeping the files already there. "
        "To retrieve everything again on purpose, add --new-run instead."
    )
