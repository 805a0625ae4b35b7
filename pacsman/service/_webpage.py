"""The page for people: jobs with progress bars, one job's rows, the upload form, sign-in
(private; wired by :func:`pacsman.service.http.make_app`).

Server-rendered with Jinja2, autoescaped: text from a PACS (descriptions, error comments)
is shown as text, never as markup.  One small stylesheet and one small script are inline,
allowed by their hashes in the Content-Security-Policy (:data:`Page.csp`); no other asset
is loaded.  The script re-reads the page every few seconds and swaps the parts marked
``data-live``, so an operator watching sees progress without losing a half-filled form.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from pacsman.errors import InputError
from pacsman.jobstore import StudyPlace
from pacsman.service._webapi import Refused, hider, job_detail, submit_form, web
from pacsman.service._webjson import row_json
from pacsman.service._webview import job_progress, job_rows
from pacsman.service.security import SESSION_COOKIE, Access, same_secret, session_value

__all__ = ["Page", "form_submit", "index", "job_page", "login", "login_page", "logout"]

TEMPLATES = Path(__file__).with_name("templates")
#: Jobs listed on the front page, and rows on a job's page (the API has them all).
_JOBS_SHOWN = 100
_ROWS_SHOWN = 1000
#: The pages a sign-in may lead back to.
_PAGES = re.compile(r"/(?:jobs/[0-9]{1,12})?")
_STAGE_KEYS = {"retrieve": "retrieve", "de-identify": "deidentify", "push": "push"}


def _hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode() + "'"


def _when(text: str) -> str:
    if not text:
        return "—"
    return datetime.fromisoformat(text).astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    whole = round(seconds)
    if whole < 90:
        return f"about {whole} s"
    if whole < 5400:
        return f"about {round(whole / 60)} min"
    return f"about {whole // 3600} h {whole % 3600 // 60:02d} min"


@dataclass(frozen=True)
class Page:
    """The templates, and the inline stylesheet and script with their CSP."""

    env: Environment
    css: Markup
    js: Markup
    #: Pages may run only the page's own script and style, and talk only to the service.
    csp: str
    token_set: bool
    token_required: bool
    secure: bool

    @classmethod
    def load(cls, *, token_set: bool, token_required: bool, secure: bool) -> Page:
        env = Environment(
            loader=FileSystemLoader(TEMPLATES), autoescape=True, undefined=StrictUndefined
        )
        env.filters["when"] = _when
        css = (TEMPLATES / "page.css").read_text(encoding="utf-8")
        js = (TEMPLATES / "live.js").read_text(encoding="utf-8")
        csp = (
            f"default-src 'none'; style-src {_hash(css)}; script-src {_hash(js)}; "
            "connect-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; "
            "frame-ancestors 'none'"
        )
        return cls(env, Markup(css), Markup(js), csp, token_set, token_required, secure)

    def render(self, request: Request, name: str, status: int = 200, **values: Any) -> HTMLResponse:
        access = getattr(request.state, "access", Access.ANONYMOUS)
        html = self.env.get_template(name).render(
            css=self.css,
            js=self.js,
            node=web(request).view.node_name,
            signed_in=access is Access.SESSION,
            can_sign_in=self.token_set,
            **values,
        )
        return HTMLResponse(html, status_code=status)


def page(request: Request) -> Page:
    found: Page = request.app.state.page
    return found


# -- the front page and a job's page ------------------------------------------------------------


def _index_values(request: Request) -> dict[str, Any]:
    view = web(request).view
    items = []
    with web(request).reading() as store:
        jobs = store.jobs()
        for job in jobs[:_JOBS_SHOWN]:
            progress, _ = web(request).cache.get(store, job)
            eta = _duration(progress.eta_seconds)
            items.append({"job": job, "progress": progress, "eta": eta})
        nodes = store.head_nodes()
    config = view.config
    now = datetime.now(UTC)
    return {
        "title": "jobs",
        "refresh": "/",
        "ready": view.readiness(),
        "jobs": items,
        "head_nodes": [{"node": node, "state": node.state(now).value} for node in nodes],
        "older": max(len(jobs) - _JOBS_SHOWN, 0),
        "pacs_nodes": list(config.pacs),
        "default_pacs": config.default_pacs,
        "error": "",
        "problems": (),
    }


def index(request: Request) -> Response:
    """``GET /``: the service's readiness, every job with its progress, the upload form."""
    return page(request).render(request, "index.html", **_index_values(request))


def job_page(request: Request) -> Response:
    """``GET /jobs/{id}``: one job, its progress, each row's states and reasons."""
    with web(request).reading() as store:
        try:
            job = store.job(int(request.path_params["job_id"]))
        except InputError as exc:
            shown = page(request)
            return shown.render(request, "message.html", 404, title="no such job", text=str(exc))
        with store.snapshot():
            rows = job_rows(store, job)
            progress = job_progress(store, job, rows)
            places = store.study_places(job.id)
            nodes = {
                node.node_name: node.state(datetime.now(UTC)).value for node in store.head_nodes()
            }
    hide = hider(request, rows)
    stages = [stage.name for stage in progress.stages[1:]]  # the query state has its column
    return page(request).render(
        request,
        "job.html",
        title=f"job {job.id}",
        refresh=f"/jobs/{job.id}",
        job=job,
        detail=job_detail(request, job, hide),
        progress=progress,
        eta=_duration(progress.eta_seconds),
        identifiers=hide is None,
        stage_names=stages,
        stage_keys=[_STAGE_KEYS[name] for name in stages],
        rows=[row_json(row, hide) for row in rows[:_ROWS_SHOWN]],
        more=max(len(rows) - _ROWS_SHOWN, 0),
        **_study_values(places, nodes),
    )


def _study_values(places: Sequence[StudyPlace], nodes: Mapping[str, str]) -> dict[str, Any]:
    """Where the job's studies are: per head node (with its state), and one by one, those
    to look at first (the StudyInstanceUID is shown only with the token, by the template)."""
    shown = StudyPlace.first_to_look_at(places)
    return {
        "study_nodes": [
            {"name": name, "state": nodes.get(name, "unknown"), "counts": counts}
            for name, counts in StudyPlace.by_node(places).items()
        ],
        "studies": shown[:_ROWS_SHOWN],
        "more_studies": max(len(shown) - _ROWS_SHOWN, 0),
    }


async def form_submit(request: Request) -> Response:
    """``POST /jobs`` (the upload form): 303 to the new job's page; the front page with
    every problem when nothing was queued."""
    try:
        job = await submit_form(request)
    except Refused as refused:
        values = await run_in_threadpool(_index_values, request)
        values.update(error=str(refused), problems=refused.problems)
        return page(request).render(request, "index.html", refused.status, **values)
    return RedirectResponse(f"/jobs/{job.id}", status_code=303)


# -- signing in (a browser with the token sees identifiers; off loopback, anything) -------------


def _next(target: str) -> str:
    """Where to go after signing in: one of this service's pages, nothing else."""
    return target if _PAGES.fullmatch(target) else "/"


def login_page(request: Request, *, status: int = 200, error: str = "") -> Response:
    """``GET /login``: the sign-in form (also the answer to a page asked for without it)."""
    wanted = request.query_params.get("next") or (
        request.url.path if request.url.path != "/login" else "/"
    )
    shown = page(request)
    return shown.render(
        request,
        "login.html",
        status,
        title="sign in",
        next=_next(wanted),
        error=error,
        required=shown.token_required,
    )


async def login(request: Request) -> Response:
    """``POST /login``: with the right token, the login cookie and 303 to ``next``."""
    token: str | None = request.app.state.token
    async with request.form(max_files=0, max_fields=4) as form:
        given = str(form.get("token") or "").strip()
        target = _next(str(form.get("next") or "/"))
    if token is None or not same_secret(given, token):
        return login_page(request, status=401, error="That is not the service's API token.")
    answer = RedirectResponse(target, status_code=303)
    answer.set_cookie(
        SESSION_COOKIE,
        session_value(token),
        httponly=True,
        samesite="strict",
        secure=page(request).secure,
        path="/",
    )
    return answer


def logout(request: Request) -> Response:
    """``POST /logout``: forget the login cookie."""
    answer = RedirectResponse("/", status_code=303)
    answer.delete_cookie(SESSION_COOKIE, path="/", samesite="strict", httponly=True)
    return answer
