"""XNAT's REST API for the other stages (``pacsman dqr``): the push's login, TLS settings and
error mapping, and its reads of what the archive holds.

    with logged_in(config.xnat, credentials, timeout=60) as rest:
        response = rest.send("POST", "/xapi/...", json=body)
        if response.status_code != 200:
            raise answer_error(response, "asking XNAT for ...")
        found = find_archived(rest, project, "SESS01")

Every request carries the credentials (HTTP basic), so a long run never meets an expired
login session.  Messages quote XNAT's own words, never the credentials.
"""

from __future__ import annotations

from pacsman.push._xnat_connection import ANSWER_TIMEOUT, Rest, answer_error, logged_in
from pacsman.push._xnat_state import (
    ArchivedSession,
    archived_counts,
    find_archived,
    project_sessions,
    project_subjects,
)
from pacsman.push.labels import ExistingSession

__all__ = [
    "ANSWER_TIMEOUT",
    "ArchivedSession",
    "ExistingSession",
    "Rest",
    "answer_error",
    "archived_counts",
    "find_archived",
    "logged_in",
    "project_sessions",
    "project_subjects",
]
