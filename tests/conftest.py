"""Shared fixtures: real peers (Orthanc, DCMTK) and the fake PACS, all on 127.0.0.1.

A missing Orthanc or DCMTK skips the tests that need it, with the reason, except when the
``CI`` environment variable is set: CI must have both, so there a missing peer fails.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pacsman.testing.dcmtk import DCMTK_PATH, StoreSCP, dcmtk_tool
from pacsman.testing.fakepacs import FakePacs
from pacsman.testing.orthanc import ORTHANC_BINARY, OrthancServer, orthanc_available
from pacsman.testing.postgres import POSTGRES_ROOT, PostgresServer, postgres_available
from pacsman.testing.synthetic import DEMO_STUDIES, StudySpec, iter_datasets

_DATABASES = itertools.count(1)
_ORTHANC_FIXTURES = {"orthanc", "demo_orthanc", "make_orthanc"}
_DCMTK_FIXTURES = {"dcmtk_bin", "store_scp"}


def require_peer(available: bool, what: str, install: str) -> None:
    """Skip the test if a real peer is missing, or fail it when running in CI."""
    if available:
        return
    message = f"{what} is not installed; {install}"
    if os.environ.get("CI"):
        pytest.fail(f"{message} (CI must provide it)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """One Debian PostgreSQL for the whole session (as the ``postgres`` user, on a random
    port); each test makes the databases it needs (``create_database``, distinct names)."""
    require_peer(
        postgres_available(),
        f"PostgreSQL ({POSTGRES_ROOT}/*/bin/initdb)",
        "apt-get install postgresql",
    )
    with PostgresServer() as server:
        yield server


@pytest.fixture
def pg_url(postgres: PostgresServer) -> str:
    """A new, empty database of the test PostgreSQL: its URL (no password: the test server
    trusts local logins)."""
    name = f"test_{next(_DATABASES)}"
    postgres.create_database(name)
    return postgres.dsn(name)


@pytest.fixture(params=["sqlite", "postgresql"])
def store_location(request: pytest.FixtureRequest, tmp_path: Path) -> Path | str:
    """A new job store on each backend: a SQLite file, or a new PostgreSQL database's URL."""
    if request.param == "sqlite":
        return tmp_path / "jobs.sqlite"
    url: str = request.getfixturevalue("pg_url")
    return url


def _require_orthanc() -> None:
    require_peer(orthanc_available(), f"Orthanc ({ORTHANC_BINARY})", "apt install orthanc")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark tests by the real peers their fixtures start, so ``-m "not orthanc"`` works."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if names & _ORTHANC_FIXTURES:
            item.add_marker(pytest.mark.orthanc)
        if names & _DCMTK_FIXTURES:
            item.add_marker(pytest.mark.dcmtk)
        if "postgres" in names:
            item.add_marker(pytest.mark.postgres)


@pytest.fixture(scope="session")
def _shared_orthanc() -> Iterator[OrthancServer]:
    _require_orthanc()
    with OrthancServer(ae_title="ORTHANC") as server:
        yield server


@pytest.fixture
def orthanc(_shared_orthanc: OrthancServer) -> OrthancServer:
    """An Orthanc shared by the session, emptied before each test (its modalities stay)."""
    _shared_orthanc.delete_all()
    return _shared_orthanc


@pytest.fixture(scope="session")
def demo_orthanc() -> Iterator[OrthancServer]:
    """An Orthanc holding :data:`DEMO_STUDIES`, shared by the session: do not modify it."""
    _require_orthanc()
    with OrthancServer(ae_title="DEMOPACS") as server:
        server.upload_datasets(ds for spec in DEMO_STUDIES for ds in iter_datasets(spec))
        yield server


@pytest.fixture
def make_orthanc() -> Iterator[Callable[..., OrthancServer]]:
    """Factory: ``make_orthanc(**OrthancServer kwargs)`` starts a private Orthanc."""
    _require_orthanc()
    started: list[OrthancServer] = []

    def start(**kwargs: Any) -> OrthancServer:
        server = OrthancServer(**kwargs).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture
def fake_pacs() -> Iterator[Callable[..., FakePacs]]:
    """Factory: ``fake_pacs(specs=DEMO_STUDIES, **FakePacs kwargs)`` starts a fake PACS."""
    started: list[FakePacs] = []

    def start(specs: Iterable[StudySpec] = DEMO_STUDIES, **kwargs: Any) -> FakePacs:
        pacs = FakePacs.from_specs(specs, **kwargs).start()
        started.append(pacs)
        return pacs

    yield start
    for pacs in started:
        pacs.stop()


@pytest.fixture(scope="session")
def dcmtk_bin() -> Callable[[str], Path]:
    """Resolve a DCMTK tool in /usr/bin:/bin (pynetdicom's scripts shadow them on PATH)."""

    def resolve(name: str) -> Path:
        path = dcmtk_tool(name)
        require_peer(path is not None, f"DCMTK {name} (in {DCMTK_PATH})", "apt install dcmtk")
        assert path is not None
        return path

    return resolve


@pytest.fixture
def store_scp(dcmtk_bin: Callable[[str], Path]) -> Iterator[Callable[..., StoreSCP]]:
    """Factory: ``store_scp(directory=None, **StoreSCP kwargs)`` starts DCMTK storescp."""
    dcmtk_bin("storescp")
    started: list[StoreSCP] = []

    def start(directory: Path | None = None, **kwargs: Any) -> StoreSCP:
        scp = StoreSCP(directory, **kwargs).start()
        started.append(scp)
        return scp

    yield start
    for scp in started:
        scp.stop()
