"""The one exception route handlers raise: an XNAT error answer (status + ``<h3>`` message)."""

from __future__ import annotations

__all__ = ["ArchiveConflict", "XnatHttpError"]


class XnatHttpError(Exception):
    """Answer the request with ``status`` and XNAT's status page carrying ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


class ArchiveConflict(Exception):
    """Archiving a session clashed with the archive; ``message`` is XNAT's reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
