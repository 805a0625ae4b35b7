"""Project anonymization scripts (XNAT's ``/xapi/anonymize/projects/{project}``): the script
as text (204 when there is none or it is disabled), and its enabled flag.
"""

from __future__ import annotations

from pacsman.testing.xnat_emulator._context import Context
from pacsman.testing.xnat_emulator._dqr_routes import xapi
from pacsman.testing.xnat_emulator._errors import XnatHttpError
from pacsman.testing.xnat_emulator._http import Request, Response
from pacsman.testing.xnat_emulator._render import json_response

__all__ = ["anonymization_enabled", "anonymization_script"]

_UNKNOWN = "There was an error in the request : null"  # XNAT's answer for an unknown project
_TEXT = "text/plain;charset=UTF-8"


def _project(request: Request, context: Context) -> str:
    project = request.segments[3]
    with context.store.lock:
        known = project in context.store.projects
    if not known:
        raise XnatHttpError(500, _UNKNOWN)
    return project


@xapi
def anonymization_script(request: Request, context: Context) -> Response:
    """``GET|PUT /xapi/anonymize/projects/{project}``: read or set the script text."""
    project = _project(request, context)
    scripts = context.anonymization
    if request.method == "PUT":
        scripts.set_script(project, request.body_bytes().decode("utf-8", "replace"))
        return Response(200, b"", _TEXT)
    script, enabled = scripts.get(project)
    if not script or not enabled:
        return Response(204, b"", _TEXT)
    return Response(200, script.encode(), _TEXT)


@xapi
def anonymization_enabled(request: Request, context: Context) -> Response:
    """``GET /xapi/anonymize/projects/{project}/enabled`` (bare JSON boolean);
    ``PUT ...?enable=true|false`` sets it."""
    project = _project(request, context)
    scripts = context.anonymization
    if request.method == "PUT":
        wanted = request.query.get("enable", "").lower()
        if wanted not in ("true", "false"):
            raise XnatHttpError(400, f"Query parameter 'enable': {wanted!r} is not true or false.")
        scripts.set_enabled(project, wanted == "true")
        return Response(200, b"", _TEXT)
    script, enabled = scripts.get(project)
    return json_response(bool(script) and enabled)
