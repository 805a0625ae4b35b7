"""Verify stage: is a series complete?  Three numbers, one verdict.

* ``received`` -- unique SOPInstanceUIDs on disk for the series (the only number pacsman proves);
* ``expected`` -- what C-FIND promised (NumberOfSeriesRelatedInstances or an image-level count);
* ``reported`` -- what the final C-MOVE/C-GET response claimed (completed / failed).

A series is COMPLETE only when what is on disk reaches what the PACS said exists.  A PACS that
reports success while delivering less (it happens) is caught here, not trusted.
"""

from __future__ import annotations

from dataclasses import dataclass

from pacsman.models import ItemState

__all__ = ["SeriesVerdict", "verify_series"]


@dataclass(frozen=True)
class SeriesVerdict:
    """The verdict on one series after a retrieve pass."""

    state: ItemState
    received: int
    target: int | None
    detail: str


def _reported(completed: int | None, failed: int | None) -> str:
    if completed is None and failed is None:
        return "the PACS reported no counts"
    return f"the PACS reported {completed or 0} completed, {failed or 0} failed"


def verify_series(
    *,
    received: int,
    expected: int | None,
    reported_completed: int | None = None,
    reported_failed: int | None = None,
) -> SeriesVerdict:
    """Compare received with expected (or, when C-FIND gave no count, with reported).

    COMPLETE when ``received`` reaches the target; INCOMPLETE (n of m) otherwise.
    """
    target = expected if expected is not None else reported_completed
    reported = _reported(reported_completed, reported_failed)
    if target is None:
        if received > 0 and not reported_failed:
            detail = f"received {received}; no count to verify against ({reported})"
            return SeriesVerdict(ItemState.COMPLETE, received, None, detail)
        detail = f"received {received}; no count to verify against ({reported})"
        return SeriesVerdict(ItemState.INCOMPLETE, received, None, detail)
    if received >= target:
        detail = (
            ""
            if received == target
            else (
                f"received {received}, more than the {target} expected "
                "(the PACS gained instances since the query)"
            )
        )
        return SeriesVerdict(ItemState.COMPLETE, received, target, detail)
    detail = f"{received} of {target} received; {reported}"
    return SeriesVerdict(ItemState.INCOMPLETE, received, target, detail)
