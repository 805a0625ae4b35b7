"""The JSON side of the service's HTTP server: health, readiness, metrics and the job API
(private; wired by :func:`pacsman.service.http.make_app`).

Endpoints that read or write the job store are plain functions: Starlette runs them in its
thread pool, where they call the (thread-safe) :class:`~pacsman.jobstore.JobStore`.  Those
that read a form are coroutines and hand the store's work to the thread pool themselves.
Pages and the API read the store through a connection of their own, opened where the
service's is (a SQLite file or a PostgreSQL URL).

``GET /api/jobs/{id}`` is the job as ``GET /api/jobs`` lists it, plus ``studies``: where
the job's studies are between the head nodes of the job store (the same every request;
empty lists and zero counts for a job with no study yet, or one run before study claims)::

    "studies": {
      "total": 5,
      "by_state": {"OPEN": 1, "CLAIMED": 1, "EXPIRED": 1, "DONE": 1, "FAILED": 1},
      "by_node": [
        {"node": "alpha", "node_state": "alive",
         "CLAIMED": 0, "EXPIRED": 0, "DONE": 1, "FAILED": 1}, ...],
      "studies": [
        {"line": 2, "pacs": "orthanc", "state": "CLAIMED", "node": "beta",
         "owner_node": "beta", "holder_node": "beta", "generation": 7,
         "lease_seconds_left": 41.5, "series": 2,
         "where": "held by beta: lease 41 s left (generation 7)",
         "StudyInstanceUID": "1.2.3..."}, ...]
    }

``by_state`` counts every study (``EXPIRED``: claimed, its lease run out; another node
takes it over).  ``by_node`` has each head node that holds or worked on a study of the job,
by name, with ``node_state`` from its heartbeat (``alive``, ``stale``, ``stopped``, or
``unknown`` for a node no longer registered); an open study belongs to no node.
``studies`` lists each study in query-file order (``line``: the first line that selected
it, 0 when none is known); ``node`` is the node holding it now (its owner while claimed,
else the node whose disk has its files; ``""`` for none); ``lease_seconds_left`` is null
unless it is claimed (negative once expired).  ``StudyInstanceUID`` is there only for a
request with the token: without it a study is named by its line and PACS.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.datastructures import FormData, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pacsman.errors import ConfigError, InputError, QueryFileError
from pacsman.jobstore import JobStore, StudyPlace
from pacsman.jobstore.jobs import MAX_QUERYFILE_BYTES, PRIORITIES, Job, JobAction, JobOptions
from pacsman.service._webjson import ProgressCache, job_json, job_redactor, row_json
from pacsman.service._webview import RowState, job_rows
from pacsman.service.security import Access, Redactor
from pacsman.service.state import ServiceView
from pacsman.service.submit import check_options, queue_job

__all__ = [
    "FORM_FIELDS",
    "Refused",
    "Web",
    "access_of",
    "api_action",
    "api_job",
    "api_jobs",
    "api_rows",
    "api_submit",
    "healthz",
    "hider",
    "job_detail",
    "metrics",
    "read_rows",
    "readyz",
    "studies_json",
    "submit_form",
]

#: The fields of a submission (the multipart upload ``file`` besides), as ``pacsman submit``.
FORM_FIELDS = (
    "save",
    "anonymize",
    "push",
    "nifti",
    "pacs",
    "sheet",
    "encoding",
    "priority",
    "name",
    "bids",  # refused: it would name a file of the service's host
)
_TRUE = frozenset({"1", "true", "on", "yes"})
_FALSE = frozenset({"", "0", "false", "off", "no"})
_PRIORITY = PRIORITIES
#: A study's states as ``studies.by_state`` counts them; a node holds the last four.
_STUDY_STATES = ("OPEN", "CLAIMED", "EXPIRED", "DONE", "FAILED")


@dataclass(frozen=True)
class Web:
    """What every endpoint needs: the service, the metrics function, the progress cache."""

    view: ServiceView
    metrics: Callable[[], tuple[bytes, str]] | None
    cache: ProgressCache

    @contextmanager
    def reading(self) -> Iterator[JobStore]:
        """The job store, read through a connection of its own: a large job's page never
        holds the lock the service's writers take (WAL lets readers and a writer go on).
        It is opened where the service's is: its SQLite file or its PostgreSQL URL."""
        with JobStore(self.view.store.location, read_only=True) as store:
            yield store


class Refused(Exception):
    """A submission or action that cannot be done: HTTP ``status``, a message, and (for a
    query file) every located problem."""

    def __init__(self, status: int, message: str, problems: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.problems = problems

    def response(self) -> JSONResponse:
        body: dict[str, Any] = {"error": str(self)}
        if self.problems:
            body["problems"] = list(self.problems)
        return JSONResponse(body, status_code=self.status)


def web(request: Request) -> Web:
    found: Web = request.app.state.web
    return found


def access_of(request: Request) -> Access:
    """How the request proved itself (set by the guard in :mod:`pacsman.service.http`)."""
    found: Access = request.state.access
    return found


# -- health, readiness, metrics ------------------------------------------------------------------


def healthz(request: Request) -> Response:
    """``GET /healthz``: the process is alive (no token needed, nothing else said)."""
    return JSONResponse({"status": "alive"})


def readyz(request: Request) -> Response:
    """``GET /readyz``: 200 when every check passes, else 503 with the problems."""
    found = web(request).view.readiness()
    body = {
        "ready": found.ready,
        "claiming": found.claiming,
        "checks": dict(found.checks),
        "problems": list(found.problems),
        "details": dict(found.details),
    }
    return JSONResponse(body, status_code=200 if found.ready else 503)


def metrics(request: Request) -> Response:
    """``GET /metrics``: Prometheus text (404 when the service has no metrics)."""
    produce = web(request).metrics
    if produce is None:
        return JSONResponse({"error": "this service exports no metrics"}, status_code=404)
    body, content_type = produce()
    return Response(body, media_type=content_type)


# -- jobs ----------------------------------------------------------------------------------------


def _job_or_404(request: Request, store: JobStore) -> Job:
    try:
        return store.job(int(request.path_params["job_id"]))
    except InputError as exc:
        raise Refused(404, str(exc)) from None


def read_rows(store: JobStore, job: Job) -> list[RowState]:
    """The job's rows, read in one snapshot of the store."""
    with store.snapshot():
        return job_rows(store, job)


def hider(request: Request, rows: Sequence[RowState]) -> Redactor | None:
    """None for a request with the token; else what hides the job's identifiers."""
    return None if access_of(request).identifiers else job_redactor(rows)


def job_detail(request: Request, job: Job, hide: Redactor | None = None) -> str:
    """The job's detail line as this request may see it (``hide``: see :func:`hider`)."""
    if not job.detail or access_of(request).identifiers:
        return job.detail
    if hide is None:
        with web(request).reading() as store:
            hide = job_redactor(read_rows(store, job))
    return hide(job.detail)


def _job_summary(request: Request, store: JobStore, job: Job) -> dict[str, Any]:
    progress, hidden = web(request).cache.get(store, job)
    detail = job.detail if access_of(request).identifiers else hidden
    return {**job_json(job, detail=detail), **progress.json()}


def api_jobs(request: Request) -> Response:
    """``GET /api/jobs``: every job, newest first, with its counts per stage."""
    with web(request).reading() as store:
        jobs = [_job_summary(request, store, job) for job in store.jobs()]
    return JSONResponse({"jobs": jobs})


def api_job(request: Request) -> Response:
    """``GET /api/jobs/{id}``: one job, its counts per stage, (while it runs) its ETA, and
    where its studies are between the head nodes (see the module's docstring)."""
    with web(request).reading() as store:
        try:
            job = _job_or_404(request, store)
        except Refused as refused:
            return refused.response()
        found = _job_summary(request, store, job)
        with store.snapshot():
            places = store.study_places(job.id)
            nodes = {
                node.node_name: node.state(datetime.now(UTC)).value for node in store.head_nodes()
            }
    uids = access_of(request).identifiers
    return JSONResponse({**found, "studies": studies_json(places, nodes, uids=uids)})


def studies_json(
    places: Sequence[StudyPlace], nodes: Mapping[str, str], *, uids: bool
) -> dict[str, Any]:
    """A job's studies as ``GET /api/jobs/{id}`` shows them: ``nodes`` maps each head node
    to its state; ``uids`` adds each StudyInstanceUID (a request with the token)."""
    by_state = Counter(place.shown_state for place in places)
    return {
        "total": len(places),
        "by_state": {state: by_state[state] for state in _STUDY_STATES},
        "by_node": [
            {
                "node": name,
                "node_state": nodes.get(name, "unknown"),
                **{state: counts[state] for state in _STUDY_STATES[1:]},
            }
            for name, counts in StudyPlace.by_node(places).items()
        ],
        "studies": [place.to_json(uids=uids) for place in places],
    }


def api_rows(request: Request) -> Response:
    """``GET /api/jobs/{id}/rows``: each row's state and reasons per stage (query values,
    labels, studies and series found only with the token)."""
    with web(request).reading() as store:
        try:
            job = _job_or_404(request, store)
        except Refused as refused:
            return refused.response()
        rows = read_rows(store, job)
    hide = hider(request, rows)
    return JSONResponse(
        {
            "job": job.id,
            "run_id": job.run_id,
            "identifiers": hide is None,
            "rows": [row_json(row, hide) for row in rows],
        }
    )


def api_action(request: Request) -> Response:
    """``POST /api/jobs/{id}/cancel|pause|resume|retry-failed``: 200 with the job; 404 for
    an unknown job; 409 when the action does not apply to the job's state."""
    view = web(request).view
    try:
        job = _job_or_404(request, view.store)
        action = _action(request.path_params["action"])
        try:
            changed = view.store.request_job(job.id, action)
        except InputError as exc:
            raise Refused(409, str(exc)) from None
    except Refused as refused:
        return refused.response()
    view.wake()
    return JSONResponse(job_json(changed, detail=job_detail(request, changed)))


def _action(name: str) -> JobAction:
    try:
        return JobAction(name)
    except ValueError:
        known = ", ".join(a.value for a in JobAction)
        raise Refused(404, f"no job action {name[:40]!r}; the actions are {known}") from None


# -- submitting a query file ---------------------------------------------------------------------


def _flag(form: FormData, name: str) -> bool:
    value = str(form.get(name) or "").strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise Refused(400, f"{name} {value[:40]!r} is not yes or no; send true or false")


def _text(form: FormData, name: str) -> str | None:
    value = form.get(name)
    text = value.strip() if isinstance(value, str) else ""
    return text or None


def _priority(form: FormData) -> int:
    text = _text(form, "priority") or "0"
    try:
        priority = int(text)
    except ValueError:
        priority = _PRIORITY.start - 1
    if priority not in _PRIORITY:
        raise Refused(
            400,
            f"priority {text[:40]!r} is not a whole number from {_PRIORITY.start} to "
            f"{_PRIORITY.stop - 1}; higher runs first",
        )
    return priority


def _options(form: FormData) -> JobOptions:
    if _text(form, "bids"):
        raise Refused(
            400,
            "bids: a BIDS mapping file is not taken over HTTP (it would name a file on the "
            "service's host); send nifti alone, or queue the job on the head node with "
            "'pacsman submit --nifti --bids MAP', or set serve.inbox_job.bids",
        )
    return JobOptions(
        save=_flag(form, "save"),
        anonymize=_flag(form, "anonymize"),
        push=_text(form, "push"),
        pacs=_text(form, "pacs"),
        sheet=_text(form, "sheet"),
        encoding=_text(form, "encoding"),
        nifti=_flag(form, "nifti"),
    )


async def _upload(form: FormData) -> tuple[str, bytes]:
    upload = form.get("file")
    if not isinstance(upload, UploadFile) or not upload.filename:
        raise Refused(400, "no query file: send it as the multipart field 'file'")
    content = await upload.read(MAX_QUERYFILE_BYTES + 1)
    return Path(upload.filename).name, content


def _located(exc: QueryFileError | ConfigError, filename: str) -> tuple[str, ...]:
    """Every problem, located in the file as the user named it (not the scratch copy)."""
    return tuple(
        str(replace(p, source=filename)) if Path(p.source).name == filename else str(p)
        for p in exc.problems
    )


def _queue(view: ServiceView, filename: str, content: bytes, form: FormData) -> Job:
    options = _options(form)
    priority = _priority(form)
    try:
        check_options(view.config, options)
    except ConfigError as exc:
        raise Refused(400, str(exc).splitlines()[-1], _located(exc, filename)) from None
    except InputError as exc:
        raise Refused(400, str(exc)) from None
    try:
        job = queue_job(
            view.store,
            view.config,
            filename=filename,
            content=content,
            options=options,
            name=_text(form, "name"),
            priority=priority,
            source="http",
        )
    except QueryFileError as exc:
        problems = _located(exc, filename)
        message = f"{filename}: {len(problems)} problem(s); nothing was queued"
        raise Refused(422, message, problems) from None
    except InputError as exc:
        raise Refused(422, f"{exc}; nothing was queued") from None
    view.wake()
    return job


async def submit_form(request: Request) -> Job:
    """Read a submission (multipart: ``file`` plus :data:`FORM_FIELDS`) and queue it.

    Raises:
        Refused: 400 for a bad option or a missing file, 413 for a file too large, 422 for a
            query file that fails validation (every located problem).
    """
    async with request.form(max_files=1, max_fields=len(FORM_FIELDS) + 4) as form:
        filename, content = await _upload(form)
        if len(content) > MAX_QUERYFILE_BYTES:
            raise Refused(413, f"{filename}: more than {MAX_QUERYFILE_BYTES} bytes; split it")
        return await run_in_threadpool(_queue, web(request).view, filename, content, form)


async def api_submit(request: Request) -> Response:
    """``POST /api/jobs``: 201 with the job queued; 400, 413 or 422 (nothing queued)."""
    try:
        job = await submit_form(request)
    except Refused as refused:
        return refused.response()
    body = job_json(job, detail=job.detail)
    return JSONResponse(body, status_code=201, headers={"Location": f"/api/jobs/{job.id}"})
