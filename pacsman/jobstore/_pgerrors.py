"""What went wrong with a PostgreSQL job store, in words, with the fix (private).

Connection problems (server down, wrong host or port, authentication, no such database)
become a :class:`~pacsman.errors.JobStoreError` naming the store (its URL without a
password) and what to do; a connection lost once open (or not yet open again) becomes its
kind :class:`~pacsman.errors.JobStoreConnectionLost`, which the service waits out.  Errors
in pacsman's own SQL stay as they are: they are bugs, reported as such.
"""

from __future__ import annotations

from pacsman.errors import JobStoreConnectionLost, JobStoreError
from pacsman.jobstore._backend import PostgresDatabase, redacted

__all__ = ["connect_postgresql", "raise_for_server"]

#: SQLSTATE classes about the server or the connection, not the SQL: connection exception,
#: insufficient resources, operator intervention, system error, invalid authorization,
#: invalid catalog name (no such database).
_ABOUT_THE_SERVER = ("08", "53", "57", "58", "28", "3D")
#: The user may not create or change the store's tables (PostgreSQL 15: no CREATE on public).
_INSUFFICIENT_PRIVILEGE = "42501"
#: The server ended the session: an administrator (pg_terminate_backend, or
#: idle_in_transaction_session_timeout), a crash of another backend, or a shutdown.
_SESSION_ENDED = frozenset({"57P01", "57P02", "57P03"})


def connect_postgresql(url: str) -> PostgresDatabase:
    """A connection to the PostgreSQL job store at ``url``.

    Raises:
        JobStoreError: the server cannot be reached, refuses the login, or has no such
            database; the message says how to fix it.
    """
    import psycopg

    try:
        return PostgresDatabase(url)
    except psycopg.Error as exc:
        raise _server_error(redacted(url), exc) from exc


def raise_for_server(where: str, exc: Exception) -> None:
    """Raise ``exc`` as a :class:`JobStoreError` when it is about the server; else return.

    Raises:
        JobStoreError: the server or the connection is the problem.
    """
    import psycopg

    state = getattr(exc, "sqlstate", None) or ""
    about_the_server = state[:2] in _ABOUT_THE_SERVER or state == _INSUFFICIENT_PRIVILEGE
    operational = isinstance(exc, psycopg.OperationalError)
    if operational and (not state or state[:2] == "08" or state in _SESSION_ENDED):
        # psycopg gives no SQLSTATE for a connection that broke under it, nor for a server
        # that refuses a new one: both are the connection, never the SQL.
        raise _server_error(where, exc, JobStoreConnectionLost) from exc
    if operational or about_the_server:
        raise _server_error(where, exc) from exc


def _server_error(
    where: str, exc: Exception, kind: type[JobStoreError] = JobStoreError
) -> JobStoreError:
    primary = getattr(getattr(exc, "diag", None), "message_primary", None)  # no SQL echoed
    what = primary or " ".join(str(exc).split()) or type(exc).__name__
    return kind(f"job store {where}: {what}; {_fix(what, getattr(exc, 'sqlstate', None))}")


#: Where a password goes: never the config, nor the URL.
PASSWORD_FIX = (
    "give its password in PGPASSWORD, in ~/.pgpass, in the file PGPASSFILE names, or under "
    "systemd with LoadCredential=pgpass:/etc/pacsman/pgpass and Environment=PGPASSFILE=%d/pgpass "
    "(never in the config or the URL)"
)


def _fix(what: str, state: str | None) -> str:
    """What to do about the connection error ``what`` (SQLSTATE ``state`` when known)."""
    state = state or ""
    if state.startswith("28") or "password" in what:
        return f"check the user in the URL and {PASSWORD_FIX}"
    if state == "3D000" or ("database" in what and "does not exist" in what):
        return (
            "create the database (as the postgres user: createdb -O USER DATABASE), or fix "
            "its name in 'jobstore' (or --jobstore)"
        )
    if state == _INSUFFICIENT_PRIVILEGE:
        return (
            "the user in the URL must own the job store's database (as the postgres user: "
            "ALTER DATABASE DATABASE OWNER TO USER, or createdb -O USER DATABASE for a new one)"
        )
    if "role" in what and "does not exist" in what:
        return "create that user (createuser USER), or fix the user in 'jobstore' (or --jobstore)"
    if "pg_hba.conf" in what:
        return (
            "allow this host and user in the server's pg_hba.conf (then reload it), or fix "
            "the user or database in 'jobstore' (or --jobstore)"
        )
    if "translate host name" in what:
        return "fix the host in 'jobstore' (or --jobstore): this machine cannot resolve it"
    return (
        "check that PostgreSQL runs there and that the host and port in 'jobstore' (or "
        "--jobstore) are right, then run the command again"
    )
