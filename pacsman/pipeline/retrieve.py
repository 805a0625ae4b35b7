"""The retrieve half of the pipeline: Storage SCP up, C-MOVE/C-GET per series, verify, record.

Private to :mod:`pacsman.pipeline`.  Per PACS node:

1. pre-flight: move ONE real instance of the first series to pacsman and check it arrived, so a
   misconfigured move destination fails the night's run at its first minute;
2. passes: retrieve every unsettled series (``max_associations`` workers, paced by
   :class:`~pacsman.throttle.Courtesy`), verify each, and re-request only the INCOMPLETE ones,
   up to ``retrieve_passes`` times.

Each series goes into the raw directory the job store records for it.  What arrives is
counted as it arrives (instances and bytes), and each verdict as it is recorded
(:class:`~pacsman.pipeline.progress.Counts`).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import structlog

from pacsman.config import Config, PacsNode
from pacsman.dicom import scp
from pacsman.dicom.client import DicomPeer, StorageRole, SubOperationsFailed
from pacsman.dicom.scp import InstanceWriter, StorageSCP, StoredInstance
from pacsman.dicom.tls import server_context
from pacsman.errors import FatalError, ItemFailed, TransientError
from pacsman.jobstore import JobStore, RetrieveSeries, Run, recorded_directory
from pacsman.models import ItemState
from pacsman.pipeline._interrupt import closed
from pacsman.pipeline.progress import Counts, Stage
from pacsman.pipeline.reception import Reception
from pacsman.query import FindAssociation
from pacsman.retrieve import FetchResult, Level, RetrieveAssociation, SeriesRequest
from pacsman.throttle import (
    Courtesy,
    RetryPolicy,
    check_halt,
    count_retrieve,
    current_ticket,
    give_way,
    in_context,
)
from pacsman.verify import verify_series

__all__ = ["RETRIEVABLE", "retrieve_pending", "storage_scp"]

_log = structlog.get_logger("pacsman.pipeline")

#: Series states the retrieve stage works on (FAILED is tried again on the next run).
RETRIEVABLE = frozenset(
    {ItemState.QUERIED, ItemState.RETRIEVING, ItemState.INCOMPLETE, ItemState.FAILED}
)


@dataclass(frozen=True)
class _Node:
    """Everything one PACS node's workers share."""

    node: PacsNode
    peer: DicomPeer
    retry: RetryPolicy
    courtesy: Courtesy
    reception: Reception
    move_destination: str | None
    storage: StorageRole | None

    def association(self, *, retry: RetryPolicy | None = None) -> RetrieveAssociation:
        return RetrieveAssociation(
            self.peer,
            receiver=self.reception.writer,
            retry=retry or self.retry,
            courtesy=self.courtesy,
            move_destination=self.move_destination,
            storage=self.storage,
        )

    def count_retrieve(self) -> None:
        """This job starts a C-MOVE/C-GET towards the node (the service's fair shares)."""
        count_retrieve(self.node.name, self.node.head_node_associations)

    def give_way(self) -> bool:
        """Whether a worker that finished a unit should give its association up: another
        job of the service waits for one towards this PACS (round-robin between jobs)."""
        return give_way(self.node.name, self.node.head_node_associations)


def _ignore(_: StoredInstance) -> None:
    """The pre-flight's one instance is counted by the series' verdict, not as it arrives."""


class StudyTracker:
    """Knows when every selected series of a study is COMPLETE, and says so once; counts
    each instance as it arrives, and each series COMPLETE or FAILED as its verdict is
    recorded (its instances then set to what verification found on disk: files left by an
    interrupted run arrive again as duplicates, which are not counted as they arrive)."""

    def __init__(
        self,
        tasks: Sequence[RetrieveSeries],
        on_complete: Callable[[str], None] | None,
        counts: Counts | None = None,
    ) -> None:
        self._series: dict[str, set[str]] = {}
        for task in tasks:
            self._series.setdefault(task.study_instance_uid, set()).add(task.series_instance_uid)
        self._complete = {t.series_instance_uid for t in tasks if t.state is ItemState.COMPLETE}
        self._announced: set[str] = set()
        self._on_complete = on_complete
        self._counts = counts
        #: Instances counted per series not settled yet (arrived, or found by a verdict).
        self._counted: dict[str, int] = {}
        self._lock = threading.Lock()

    def stored(self, instance: StoredInstance) -> None:
        """Count a new instance and its bytes (the Storage SCP's ``on_stored``)."""
        if self._counts is None or instance.duplicate:
            return
        series = instance.series_instance_uid
        with self._lock:
            self._counted[series] = self._counted.get(series, 0) + 1
        self._counts.add(Stage.RETRIEVE, instances=1, size=instance.size)

    def update(
        self,
        unit: Sequence[RetrieveSeries],
        states: dict[str, ItemState],
        received: dict[str, int] | None = None,
    ) -> None:
        """Record the verdicts of ``unit`` (and the instances each series has on disk);
        call back for a study that just became complete."""
        if self._counts is not None:
            self._count(states, received or {})
        if self._on_complete is None:
            return
        ready = []
        with self._lock:
            self._complete |= {uid for uid, s in states.items() if s is ItemState.COMPLETE}
            for study in {t.study_instance_uid for t in unit} - self._announced:
                if self._series[study] <= self._complete:
                    self._announced.add(study)
                    ready.append(study)
        for study in ready:
            self._on_complete(study)

    def _count(self, states: dict[str, ItemState], received: dict[str, int]) -> None:
        assert self._counts is not None
        found = 0
        with self._lock:
            for uid, state in states.items():
                counted = self._counted.pop(uid, 0)
                if uid in received:
                    found += received[uid] - counted
                    counted = received[uid]
                if state is ItemState.INCOMPLETE:  # asked for again in the next pass
                    self._counted[uid] = counted
        verdicts = list(states.values())
        self._counts.add(
            Stage.RETRIEVE,
            units=verdicts.count(ItemState.COMPLETE),
            failed=verdicts.count(ItemState.FAILED),
            instances=found,
        )


def _allowed_callers(config: Config) -> tuple[str, ...]:
    configured = config.local.allowed_calling_ae_titles
    return configured or tuple(sorted({n.called_ae_title for n in config.pacs.values()}))


@contextmanager
def storage_scp(config: Config, writer: InstanceWriter, needed: bool) -> Iterator[None]:
    if not needed:
        yield
        return
    local = config.local
    server = StorageSCP(
        writer,
        ae_title=local.ae_title,
        bind_host=local.bind_host,
        port=local.port,
        allowed_calling_ae_titles=_allowed_callers(config),
        accept_any_called_ae_title=local.accept_any_called_ae_title,
        association_request_timeout=local.association_request_timeout,
        max_connections_per_address=local.max_connections_per_address,
        ssl_context=server_context(local.tls) if local.tls is not None else None,
    )
    with server:
        _log.info(
            "storage_scp_listening",
            ae_title=local.ae_title,
            port=server.port,
            tls=local.tls is not None,
        )
        yield


def retrieve_pending(
    store: JobStore,
    run: Run,
    config: Config,
    out_directory: Path,
    retry_for: Callable[[PacsNode], RetryPolicy],
    *,
    on_study_complete: Callable[[str], None] | None = None,
    counts: Counts | None = None,
    reception: Reception | None = None,
    preflighted: set[str] | None = None,
) -> int:
    """Retrieve and verify every unsettled series of ``run``; return how many were worked on.

    ``on_study_complete(StudyInstanceUID)`` is called (from a worker thread) as soon as every
    selected series of a study is COMPLETE, so its de-identification can start.  ``counts``
    gets every new instance as it arrives, and every verdict.  ``reception`` is the
    service's, behind its one Storage SCP; without it, this run starts its own SCP.
    ``preflighted`` names the PACS nodes whose pre-flight passed already (a service job's
    earlier batch on this node): they are not asked again; the others are added.

    Raises:
        FatalError: a PACS refuses pacsman for good (pre-flight or mid-run); state is kept.
    """
    every = store.series_for_retrieve(run)
    pending = [t for t in every if t.state in RETRIEVABLE]
    if not pending:
        _log.info("nothing_to_retrieve", series=len(every))
        return 0
    tracker = StudyTracker(every, on_study_complete, counts)
    methods = {config.node(t.pacs).retrieve_method for t in pending}
    own = reception is None
    if reception is None:
        reception = Reception(config, out_directory / "_unrouted")
    with storage_scp(config, reception.writer, needed=own and "move" in methods):
        if counts is not None:
            counts.start(Stage.RETRIEVE)
        for pacs in dict.fromkeys(t.pacs for t in pending):
            node = _node(config, pacs, reception, retry_for)
            series = [t for t in pending if t.pacs == pacs]
            if preflighted is None or pacs not in preflighted:
                _preflight(node, series[0])
                if preflighted is not None:
                    preflighted.add(pacs)
            left = _passes(store, run, node, series, tracker)
            if counts is not None and left:
                counts.add(Stage.RETRIEVE, failed=left)
    return len(pending)


def _node(
    config: Config,
    pacs: str,
    reception: Reception,
    retry_for: Callable[[PacsNode], RetryPolicy],
) -> _Node:
    node = config.node(pacs)
    writer = reception.writer
    move = node.retrieve_method == "move"
    storage = None if move else scp.storage_role(writer)
    return _Node(
        node=node,
        peer=DicomPeer(node, config.local.ae_title, config.local.port),
        retry=retry_for(node),
        courtesy=_courtesy(node),
        reception=reception,
        move_destination=config.local.ae_title if move else None,
        storage=storage,
    )


def _courtesy(node: PacsNode) -> Courtesy:
    """The service's courtesy towards ``node``, shared by every job; else this run's own."""
    shared = current_ticket().shared
    if shared is None:
        return Courtesy(interval=node.move_interval, window=node.retrieve_window)
    return shared.courtesy(node.name, interval=node.move_interval, window=node.retrieve_window)


def _preflight(node: _Node, series: RetrieveSeries) -> None:
    """Move one real instance; prove it arrived.  Raises FatalError with the fix if not."""
    quick = RetryPolicy(max_attempts=min(3, node.retry.max_attempts))
    with closed(FindAssociation(node.peer, retry=quick)) as finder:
        scope = {"StudyInstanceUID": series.study_instance_uid}
        scope["SeriesInstanceUID"] = series.series_instance_uid
        if node.node.query_model == "patient":
            scope["PatientID"] = series.patient_id
        answers = finder.find("IMAGE", scope, ("SOPInstanceUID",))
    uids = sorted({str(a.get("SOPInstanceUID", "")) for a in answers} - {""})
    if not uids:
        return
    request = _request(series)
    holding = node.reception.holding([series.series_instance_uid], series.pacs, _ignore)
    node.count_retrieve()
    try:
        with holding, closed(node.association(retry=quick)) as association:
            fetched = association.fetch(
                [request], level="IMAGE", sop_instance_uids=uids[:1], rounds=1
            )
    except SubOperationsFailed as exc:
        if not (exc.result.failed or exc.result.failed_sop_instance_uids):
            raise FatalError(_preflight_advice(node, f"the PACS refused ({exc})")) from exc
        # The PACS tried, and could not send this one instance (its SOP class or syntax):
        # the series fails on its own, with this reason; the node works.
        _log.warning("preflight_inconclusive", pacs=node.node.name, reason=str(exc))
        return
    except (ItemFailed, TransientError) as exc:
        raise FatalError(_preflight_advice(node, f"the PACS refused ({exc})")) from exc
    if fetched.received[series.series_instance_uid] == 0:
        reported = fetched.result.completed
        if reported:
            what = f"the PACS reported {reported} instance(s) sent, but none arrived here"
            raise FatalError(_preflight_advice(node, what))
        _log.warning("preflight_inconclusive", pacs=node.node.name, reported=reported)
        return
    _log.info("preflight_ok", pacs=node.node.name, method=node.node.retrieve_method)


def _preflight_advice(node: _Node, what: str) -> str:
    if node.move_destination is None:
        return f"pre-flight C-GET of one instance from PACS {node.peer.describe()}: {what}"
    return (
        f"pre-flight C-MOVE of one instance from PACS {node.peer.describe()} to "
        f"{node.move_destination!r}: {what}. The PACS must know AE "
        f"{node.move_destination!r} at this host's address and local.port "
        f"{node.peer.local_port} (Orthanc: DicomModalities), and pacsman must accept its "
        f"calling AE {node.node.called_ae_title!r} (local.allowed_calling_ae_titles)"
    )


def _request(series: RetrieveSeries) -> SeriesRequest:
    return SeriesRequest(
        study_instance_uid=series.study_instance_uid,
        series_instance_uid=series.series_instance_uid,
        directory=recorded_directory(series.raw_directory, series.series_instance_uid),
        patient_id=series.patient_id,
    )


def _passes(
    store: JobStore,
    run: Run,
    node: _Node,
    series: list[RetrieveSeries],
    tracker: StudyTracker,
) -> int:
    """Retrieve ``series`` in up to ``retrieve_passes`` passes; return how many are left
    INCOMPLETE after the last one."""
    pending = series
    for number in range(1, node.node.retrieve_passes + 1):
        units = _units(pending, node.node.retrieve_level)
        verdicts = _run_workers(
            units,
            workers=node.node.head_node_associations,
            open_association=node.association,
            work=lambda association, unit: _fetch_unit(
                store, run, association, unit, tracker, node
            ),
            give_way=node.give_way,
        )
        pending = [
            t for t in pending if verdicts.get(t.series_instance_uid) is ItemState.INCOMPLETE
        ]
        if not pending:
            return 0
        _log.warning("series_incomplete", pacs=node.node.name, series=len(pending), pass_=number)
    return len(pending)


def _units(series: list[RetrieveSeries], level: str) -> list[list[RetrieveSeries]]:
    if level == "series":
        return [[t] for t in series]
    studies: dict[str, list[RetrieveSeries]] = {}
    for one in series:
        studies.setdefault(one.study_instance_uid, []).append(one)
    return list(studies.values())


def _fetch_unit(
    store: JobStore,
    run: Run,
    association: RetrieveAssociation,
    unit: list[RetrieveSeries],
    tracker: StudyTracker,
    node: _Node,
) -> dict[str, ItemState]:
    for series in unit:
        store.update_series(run, series, ItemState.RETRIEVING)
    level: Level = "STUDY" if len(unit) > 1 else "SERIES"
    uids = [t.series_instance_uid for t in unit]
    try:
        with node.reception.holding(uids, unit[0].pacs, tracker.stored):
            node.count_retrieve()
            fetched = association.fetch([_request(t) for t in unit], level=level)
    except (ItemFailed, TransientError) as exc:
        for series in unit:
            store.update_series(run, series, ItemState.FAILED, detail=str(exc), new_pass=True)
        _log.error(
            "series_failed", pacs=unit[0].pacs, row=unit[0].line, series=len(unit), reason=str(exc)
        )
        failed = {t.series_instance_uid: ItemState.FAILED for t in unit}
        tracker.update(unit, failed)
        return failed
    states = {t.series_instance_uid: _verify_and_record(store, run, t, fetched) for t in unit}
    tracker.update(
        unit, states, {t.series_instance_uid: fetched.received[t.series_instance_uid] for t in unit}
    )
    return states


def _verify_and_record(
    store: JobStore, run: Run, series: RetrieveSeries, fetched: FetchResult
) -> ItemState:
    received = fetched.received[series.series_instance_uid]
    result = fetched.result
    single = len(fetched.received) == 1
    verdict = verify_series(
        received=received,
        expected=series.expected_instances,
        reported_completed=result.completed if single else None,
        reported_failed=result.failed if single else None,
    )
    store.update_series(
        run,
        series,
        verdict.state,
        received=received,
        detail=verdict.detail,
        reported=(result.completed, result.failed) if single else (None, None),
        new_pass=True,
    )
    _log.info(
        "series_retrieved",
        pacs=series.pacs,
        row=series.line,
        series_number=series.series_number,
        state=verdict.state.value,
        received=received,
        expected=verdict.target,
    )
    return verdict.state


def _run_workers(
    units: list[list[RetrieveSeries]],
    *,
    workers: int,
    open_association: Callable[[], RetrieveAssociation],
    work: Callable[[RetrieveAssociation, list[RetrieveSeries]], dict[str, ItemState]],
    give_way: Callable[[], bool] = lambda: False,
) -> dict[str, ItemState]:
    """Run ``work`` over ``units`` on ``workers`` threads, one association each.

    A worker that finishes a unit while another job of the service waits for an association
    to this PACS (``give_way``) releases its association and queues for one again, so jobs
    take turns.  A job asked to stop (cancel, pause, drain) starts no new unit: the units in
    flight finish, and :class:`~pacsman.errors.Halted` is raised here.

    A FatalError (or any unexpected error, opening the association included) in one worker
    stops the others after their current unit and is raised here.  Ctrl-C here does the
    same and does not wait for them: they are daemons, and each series they were on stays
    RETRIEVING (or gets its verdict), which the next run takes up again.
    """
    todo: queue.Queue[list[RetrieveSeries]] = queue.Queue()
    for unit in units:
        todo.put(unit)
    results: dict[str, ItemState] = {}
    errors: list[BaseException] = []
    stop = threading.Event()

    def units_left(association: RetrieveAssociation) -> bool:
        """Work until no unit is left (True) or it is another job's turn (False)."""
        while not stop.is_set():
            check_halt()
            try:
                unit = todo.get_nowait()
            except queue.Empty:
                return True
            results.update(work(association, unit))
            if give_way() and not todo.empty():
                return False
        return True

    def worker() -> None:
        try:
            finished = False
            while not finished and not stop.is_set() and not todo.empty():
                with open_association() as association:
                    finished = units_left(association)
        except BaseException as exc:  # re-raised in the calling thread below, never printed
            if not stop.is_set():
                errors.append(exc)
            stop.set()

    count = max(1, workers)
    threads = [threading.Thread(target=in_context(worker), daemon=True) for _ in range(count)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    except BaseException:
        stop.set()
        raise
    if errors:
        raise errors[0]
    check_halt()
    return results
