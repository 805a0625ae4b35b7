"""The pre-flight of ``pacsman dqr``, before any import: the project, the PACS, its ping, and
the project's anonymization script.

Nothing is retried here: whatever fails ends the run at once, with the fix (as the
pipeline's XNAT pre-flight).  The labels are checked once the studies are resolved
(:func:`pacsman.dqr._arrival.labels_taken`).  DQR enablement has no endpoint of its own:
the first import's 403 says so (:class:`pacsman.dqr._xapi.DqrRefused`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import structlog

from pacsman.config import Config
from pacsman.dqr._model import PacsEntry
from pacsman.dqr._xapi import DqrApi
from pacsman.errors import FatalError, InputError, TransientError

__all__ = ["Preflight", "choose_pacs", "preflight"]

_log = structlog.get_logger("pacsman.dqr")


@dataclass(frozen=True)
class Preflight:
    """What the pre-flight found: the PACS XNAT pulls from, its ping, and whether the run
    goes ahead without an enabled anonymization script (``xnat.allow_identified``)."""

    pacs: PacsEntry
    ping_detail: str
    identified_allowed: bool


def preflight(
    api: DqrApi, config: Config, *, pacs_id: int | None, pacs_ae: str | None
) -> Preflight:
    """Check, in order: the project exists, the PACS is known to XNAT and answers its C-ECHO,
    and the project de-identifies what DQR brings (an enabled anonymization script).

    ``pacs_id``/``pacs_ae`` are the command line's; when neither is given, ``dqr.pacs_id``
    and ``dqr.pacs_ae_title`` are used; with none of them, XNAT's only PACS, or its default
    query-retrieve PACS.

    Raises:
        InputError: the PACS named is not in XNAT (the message lists those that are), or the
            project has no enabled anonymization script and ``xnat.allow_identified`` is not
            set.
        FatalError: the project is missing or hidden from the user, XNAT knows no PACS, the
            PACS does not answer XNAT's C-ECHO, the login was refused, or XNAT did not answer.
    """
    try:
        _require_project(api)
        if pacs_id is None and pacs_ae is None:
            pacs_id, pacs_ae = config.dqr.pacs_id, config.dqr.pacs_ae_title
        pacs = choose_pacs(api.pacs_list(), pacs_id=pacs_id, pacs_ae=pacs_ae, url=api.url)
        detail = _ping(api, pacs)
        allowed = _anonymization(api, config)
    except TransientError as exc:
        raise FatalError(f"pre-flight: {exc}") from None
    _log.info(
        "dqr_preflight_ok",
        project=api.project,
        pacs_id=pacs.id,
        pacs_ae_title=pacs.ae_title,
        ping=detail,
        identified_allowed=allowed,
    )
    return Preflight(pacs=pacs, ping_detail=detail, identified_allowed=allowed)


def _require_project(api: DqrApi) -> None:
    status = api.project_status()
    if status == 200:
        return
    if status in (403, 404):
        raise FatalError(
            f"project {api.project!r} does not exist on {api.url}, or the XNAT user may not "
            f"see it (XNAT answered {status}); create it in XNAT, give the user access to it, "
            "or fix xnat.project"
        )
    raise FatalError(f"checking project {api.project!r} on {api.url}: XNAT answered {status}")


def choose_pacs(
    entries: Sequence[PacsEntry], *, pacs_id: int | None, pacs_ae: str | None, url: str = "XNAT"
) -> PacsEntry:
    """The PACS to pull from: by id, by AE title (ids follow XNAT's registration order, so
    the AE title is the stable name), both (they must agree), or XNAT's only or default one.

    Raises:
        FatalError: XNAT knows no PACS.
        InputError: no PACS (or several) fits; the message lists id, AE title and label of
            each.
    """
    if not entries:
        raise FatalError(
            f"XNAT at {url} knows no PACS (GET /xapi/pacs is empty); an XNAT administrator "
            "adds the PACS in the DQR plugin's settings (Administer > Plugin Settings > "
            "DQR > PACS)"
        )
    found = [
        e
        for e in entries
        if (pacs_id is None or e.id == pacs_id)
        and (pacs_ae is None or e.ae_title.strip() == pacs_ae.strip())
    ]
    if pacs_id is None and pacs_ae is None:
        found = (
            list(entries) if len(entries) == 1 else [e for e in entries if e.default_query_retrieve]
        )
    if len(found) == 1:
        return _queryable(found[0])
    raise InputError(_no_single_pacs(entries, found, pacs_id=pacs_id, pacs_ae=pacs_ae))


def _queryable(entry: PacsEntry) -> PacsEntry:
    if entry.queryable:
        return entry
    raise InputError(
        f"PACS {entry.id} ({entry.ae_title}) is not queryable in XNAT, so DQR cannot pull "
        "from it; an XNAT administrator marks it queryable in the DQR plugin's PACS settings, "
        "or choose another PACS with --pacs-id or --pacs-ae"
    )


def _no_single_pacs(
    entries: Sequence[PacsEntry],
    found: Sequence[PacsEntry],
    *,
    pacs_id: int | None,
    pacs_ae: str | None,
) -> str:
    listed = "; ".join(_describe(e) for e in entries)
    wanted = " and ".join(
        part
        for part in (
            f"id {pacs_id}" if pacs_id is not None else "",
            f"AE title {pacs_ae!r}" if pacs_ae is not None else "",
        )
        if part
    )
    if not wanted:
        return (
            f"XNAT knows {len(entries)} PACS and none is its default query-retrieve PACS; "
            f"choose one with --pacs-id or --pacs-ae (or dqr.pacs_id / dqr.pacs_ae_title): "
            f"{listed}"
        )
    if found:
        return (
            f"{len(found)} PACS in XNAT have {wanted}; choose one by id with --pacs-id "
            f"(or dqr.pacs_id): {listed}"
        )
    return f"XNAT knows no PACS with {wanted}; XNAT's PACS are: {listed}"


def _describe(entry: PacsEntry) -> str:
    label = f" {entry.label!r}" if entry.label else ""
    default = " (default)" if entry.default_query_retrieve else ""
    return f"id {entry.id} AE {entry.ae_title}{label}{default}"


def _ping(api: DqrApi, pacs: PacsEntry) -> str:
    successful, detail = api.pacs_status(pacs.id)
    if successful:
        return detail
    raise FatalError(
        f"PACS {pacs.id} ({pacs.ae_title} at {pacs.host}:{pacs.port}) does not answer XNAT: "
        f"{detail}; check the PACS entry in XNAT (host, port, AE title) and that the PACS "
        "knows XNAT's AE title, then run the same command again"
    )


def _anonymization(api: DqrApi, config: Config) -> bool:
    """False when the project de-identifies; True when it does not and that is allowed.

    "De-identifies" is :meth:`DqrApi.anonymization_check`: ``/enabled`` answers exactly
    ``true`` and the script holds at least one instruction.

    Raises:
        InputError: no enabled script and ``xnat.allow_identified`` is not set.
    """
    enabled, why = api.anonymization_check()
    if enabled:
        return False
    if not config.xnat.allow_identified:
        raise InputError(
            f"project {api.project!r} has no enabled anonymization script ({why}), so XNAT's "
            "DQR would archive the PACS's identified data; ask an XNAT administrator to set and "
            "enable the project's anonymization script (the project's Manage tab, "
            "Anonymization), or set xnat.allow_identified: true if the project is approved "
            "for identified data"
        )
    _log.warning(
        "dqr_identified_data",
        project=api.project,
        reason=f"the project has no enabled anonymization script ({why}) and "
        "xnat.allow_identified is true: XNAT keeps the PACS's identified data",
    )
    return True
