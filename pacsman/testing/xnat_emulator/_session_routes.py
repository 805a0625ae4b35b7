"""Login, session and self-description routes: everything ``xnat.connect`` asks (contract §2)."""

from __future__ import annotations

import base64
import binascii
import json
from urllib.parse import parse_qsl

from pacsman.testing.xnat_emulator._context import Context
from pacsman.testing.xnat_emulator._errors import XnatHttpError
from pacsman.testing.xnat_emulator._http import Request, Response
from pacsman.testing.xnat_emulator._render import json_response, result_set
from pacsman.testing.xnat_emulator._schema import (
    BUILD_INFO,
    SCHEMA_NAMES,
    SESSION_TYPES,
    schema_text,
    search_fields,
)

__all__ = [
    "basic_user",
    "build_info",
    "faults_admin",
    "jsession",
    "login",
    "root",
    "schema",
    "schemas",
    "search_element",
    "search_elements",
    "whoami",
]

_COOKIE = "JSESSIONID"


def basic_user(request: Request, context: Context) -> str | None:
    """The user of a valid ``Authorization: Basic`` header, if any."""
    scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, _, password = base64.b64decode(encoded).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user if user and context.users.get(user) == password else None


def _cookie_header(token: str) -> tuple[str, str]:
    return ("Set-Cookie", f"{_COOKIE}={token}; Path=/; HttpOnly")


def root(request: Request, context: Context) -> Response:
    """``GET /``: a plain page; with Basic auth it also opens a session (alias-token login)."""
    response = Response(200, b"<html><body>XNAT emulator</body></html>", "text/html")
    user = basic_user(request, context)
    if user is not None:
        response.headers.append(_cookie_header(context.open_session(user)))
    return response


def login(request: Request, context: Context) -> Response:
    """``PUT|POST /data/services/auth``: form login; 200 + token + cookie, else 401."""
    form = dict(parse_qsl(request.body_bytes().decode("utf-8", "replace")))
    form.update({k: v for k, v in request.query.items() if k not in form})
    user = form.get("username") or form.get("j_username") or ""
    password = form.get("password") or form.get("j_password") or ""
    token = context.login(user, password)
    if token is None:
        raise XnatHttpError(401, "Authentication failed.")
    return Response(200, token.encode(), headers=[_cookie_header(token)])


def whoami(request: Request, context: Context) -> Response:
    """``GET /data/auth``."""
    return Response(200, f"User '{request.user}' is logged in".encode())


def jsession(request: Request, context: Context) -> Response:
    """``GET|POST /data/JSESSION`` answers the session id; DELETE ends it (always 200)."""
    token = request.cookie(_COOKIE)
    if request.method == "DELETE":
        context.logout(token)
        return Response(200, b"")
    if request.user is None:
        raise XnatHttpError(401, "Unauthorized")
    live = token if context.session_user(token) else context.open_session(request.user)
    return Response(200, (live or "").encode())


def build_info(request: Request, context: Context) -> Response:
    """``GET /xapi/siteConfig/buildInfo``."""
    return json_response(dict(BUILD_INFO))


def schemas(request: Request, context: Context) -> Response:
    """``GET /xapi/schemas``: the names of the schemas served."""
    return json_response(list(SCHEMA_NAMES))


def schema(request: Request, context: Context) -> Response:
    """``GET /xapi/schemas/<name>`` (or ``<namespace>/<name>``): the XSD text."""
    text = schema_text(request.segments[-1])
    if text is None:
        raise XnatHttpError(404, f"No schema named {request.segments[-1]!r}.")
    return Response(200, text.encode(), "application/xml;charset=UTF-8")


def search_elements(request: Request, context: Context) -> Response:
    """``GET /data/search/elements``: one row per searchable data type."""
    store = context.store
    with store.lock:
        counts = {
            "xnat:projectData": len(store.projects),
            "xnat:subjectData": len(store.subjects),
        }
        for experiment in store.experiments.values():
            counts[experiment.xsi_type] = counts.get(experiment.xsi_type, 0) + 1
    rows = [
        {
            "ELEMENT_NAME": name,
            "SINGULAR": name.split(":")[1],
            "PLURAL": name.split(":")[1] + "s",
            "SECURED": "true",
            "COUNT": str(counts.get(name, 0)),
        }
        for name in ("xnat:projectData", "xnat:subjectData", *SESSION_TYPES)
    ]
    return result_set(rows, "Elements")


def search_element(request: Request, context: Context) -> Response:
    """``GET /data/search/elements/<xsi type>``: its display fields."""
    element = request.segments[-1]
    found = search_fields(element)
    if found is None:
        raise XnatHttpError(404, f"Unknown search element {element!r}.")
    rows = [
        {
            "FIELD_ID": name,
            "HEADER": name.title(),
            "SUMMARY": name.title(),
            "TYPE": "string",
            "REQUIRES_VALUE": "false",
            "DESC": "",
            "ELEMENT_NAME": element,
            "SRC": "0",
        }
        for name in found
    ]
    return result_set(rows, "Fields")


def faults_admin(request: Request, context: Context) -> Response:
    """``/data/_emulator/faults``: GET shows, PUT/POST (JSON object) sets, DELETE resets."""
    faults = context.faults
    if request.method in ("PUT", "POST"):
        try:
            changes = json.loads(request.body_bytes() or b"{}")
            if not isinstance(changes, dict):
                raise ValueError("the body must be a JSON object of fault switches")
            faults.update(changes)
        except ValueError as problem:
            raise XnatHttpError(400, f"Bad fault settings: {problem}") from problem
    elif request.method == "DELETE":
        faults.reset()
    return json_response(faults.as_dict())
