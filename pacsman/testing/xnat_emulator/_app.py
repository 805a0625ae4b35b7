"""The request pipeline: identify the user, spend the request budget, wait the latency, route,
turn :class:`XnatHttpError` into XNAT's status page, and log the answer.
"""

from __future__ import annotations

import re
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus

from pacsman.testing.xnat_emulator import _dqr_routes as dqr
from pacsman.testing.xnat_emulator import _session_routes as session
from pacsman.testing.xnat_emulator._anon_routes import anonymization_enabled, anonymization_script
from pacsman.testing.xnat_emulator._archive_read import read_archive
from pacsman.testing.xnat_emulator._archive_write import delete_archive, write_archive
from pacsman.testing.xnat_emulator._context import Context, LoggedRequest
from pacsman.testing.xnat_emulator._errors import XnatHttpError
from pacsman.testing.xnat_emulator._http import Request, Response, status_page
from pacsman.testing.xnat_emulator._import_routes import archive_service, import_service
from pacsman.testing.xnat_emulator._prearchive_routes import prearchive, prearchive_service
from pacsman.testing.xnat_emulator._tree import Tree, parse_target

__all__ = ["App"]

Handler = Callable[[Request, Context], Response]
_ANY = frozenset({"GET", "HEAD", "PUT", "POST", "DELETE"})
_READ = frozenset({"GET", "HEAD"})


@dataclass(frozen=True)
class _Route:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    public: bool = False


def _archive(request: Request, context: Context) -> Response:
    target = parse_target(request.segments[1:])
    if target is None:
        raise XnatHttpError(404, "The server has not found anything matching the request URI")
    tree, store = Tree(context.store, target), context.store
    if request.method in _READ:
        with store.lock:
            return read_archive(tree, request, target)
    with store.transaction():
        if request.method == "DELETE":
            return delete_archive(tree, context)
        return write_archive(tree, request, context)


def _route(
    methods: frozenset[str], pattern: str, handler: Handler, *, public: bool = False
) -> _Route:
    return _Route(methods, re.compile(pattern), handler, public)


_ROUTES = (
    _route(_READ, r"^/$", session.root, public=True),
    _route(frozenset({"PUT", "POST"}), r"^/data/services/auth$", session.login, public=True),
    _route(frozenset({"DELETE"}), r"^/data/JSESSION$", session.jsession, public=True),
    _route(frozenset({"GET", "POST"}), r"^/data/JSESSION$", session.jsession),
    _route(_READ, r"^/data/auth$", session.whoami),
    _route(_READ, r"^/xapi/siteConfig/buildInfo$", session.build_info),
    _route(_READ, r"^/xapi/schemas$", session.schemas),
    _route(_READ, r"^/xapi/schemas/(?:[^/]+/)?[^/]+$", session.schema),
    _route(_READ, r"^/data/search/elements$", session.search_elements),
    _route(_READ, r"^/data/search/elements/[^/]+$", session.search_element),
    _route(_ANY, r"^/data/services/import$", import_service),
    _route(frozenset({"POST"}), r"^/data/services/archive$", archive_service),
    _route(
        frozenset({"POST"}),
        r"^/data/services/prearchive/(delete|move|rebuild)$",
        prearchive_service,
    ),
    _route(_ANY, r"^/data/prearchive/projects(/.*)?$", prearchive),
    _route(_ANY, r"^/data/_emulator/faults$", session.faults_admin),
    _route(_READ, r"^/xapi/pacs$", dqr.pacs_list),
    _route(_READ, r"^/xapi/pacs/[^/]+$", dqr.pacs_one),
    _route(_READ, r"^/xapi/pacs/[^/]+/status$", dqr.pacs_status),
    _route(frozenset({"POST"}), r"^/xapi/dqr/query/studies$", dqr.dqr_query_studies),
    _route(frozenset({"POST"}), r"^/xapi/dqr/import$", dqr.dqr_import),
    _route(_READ, r"^/xapi/dqr/import/queue$", dqr.dqr_queue),
    _route(_READ, r"^/xapi/dqr/query/history/user$", dqr.dqr_history),
    _route(_READ | {"PUT"}, r"^/xapi/anonymize/projects/[^/]+$", anonymization_script),
    _route(_READ | {"PUT"}, r"^/xapi/anonymize/projects/[^/]+/enabled$", anonymization_enabled),
    _route(_ANY, r"^/data/(projects|subjects|experiments)(/.*)?$", _archive),
)


def _error(status: int, message: str) -> Response:
    response = Response(status, status_page(message), "text/html;charset=UTF-8")
    if status == 401:
        response.headers.append(("WWW-Authenticate", 'Basic realm="XNAT"'))
    return response


class App:
    """Callable that answers one request for an emulator's :class:`Context`."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def __call__(self, request: Request) -> Response:
        context = self.context
        token_user = context.session_user(request.cookie("JSESSIONID"))
        request.user = token_user or session.basic_user(request, context)
        forced = context.faults.status_for(request.path)
        if not context.faults.spend(request.user or request.client):
            response = _error(503, "Service Unavailable: request budget exhausted.")
        elif forced is not None:
            response = _error(forced, HTTPStatus(forced).phrase)
        else:
            context.faults.sleep(context.faults.delay_for(request.path))
            response = self._dispatch(request)
        path, _, query = request.target.partition("?")
        status = 0 if response.drop else response.status
        context.log.append(LoggedRequest(request.method, path, query, status, request.user))
        return response

    def _dispatch(self, request: Request) -> Response:
        matching = [r for r in _ROUTES if r.pattern.match(request.path)]
        route = next((r for r in matching if request.method in r.methods), None)
        try:
            if route is None and matching:
                raise XnatHttpError(405, "The method specified in the request is not allowed.")
            if route is None:
                raise XnatHttpError(
                    404, "The server has not found anything matching the request URI"
                )
            if not route.public and request.user is None:
                raise XnatHttpError(401, "Unauthorized")
            return route.handler(request, self.context)
        except XnatHttpError as problem:
            return _error(problem.status, problem.message)
        except Exception as problem:  # an emulator bug must still answer 500
            traceback.print_exc(file=sys.stderr)
            return _error(500, f"Internal Server Error: {type(problem).__name__}: {problem}")
