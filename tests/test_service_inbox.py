"""The inbox of ``pacsman serve`` (issue 13, item 3): a file is claimed by rename, a valid
one is queued and filed in accepted/, an invalid one in rejected/ beside every located
message; files still being written are left alone; two watchers queue each file once."""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from pacsman.cli import main
from pacsman.config import Config, load_config
from pacsman.errors import ConfigError
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import JobOptions, JobState
from pacsman.service.inbox import CLAIMED, Inbox
from pacsman.service.submit import queue_job
from tests.helpers import write_config

GOOD = b"PatientID,StudyDate,Subject,Session\nP001,20240105,S1,E1\nP002,20240106,S2,E2\n"
#: Three problems: an unknown column and two dates that are no dates.
BAD = b"PatientID,StudyDate,Modalty\nP001,2023-13-01,CT\nP002,yesterday,MR\n"


def _config(tmp_path: Path, serve: str = "") -> Config:
    extra = f"serve:\n  node_name: a\n  inbox: {tmp_path / 'inbox'}\n{serve}"
    return load_config(write_config(tmp_path, port=11112, called_ae_title="PACS", extra=extra))


@pytest.fixture
def config(tmp_path: Path) -> Config:
    return _config(tmp_path)


@pytest.fixture
def store(config: Config) -> Iterator[JobStore]:
    with JobStore(config.jobstore) as opened:
        yield opened


@pytest.fixture
def inbox(store: JobStore, config: Config) -> Inbox:
    watcher = Inbox(store, config)
    assert [] == watcher.scan()  # makes the folders; nothing there yet
    return watcher


def _drop(folder: Path, name: str, content: bytes, mode: int = 0o644) -> Path:
    path = folder / name
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_valid_file_is_queued_with_its_bytes_and_filed_in_accepted(
    inbox: Inbox, store: JobStore, config: Config
) -> None:
    """Seen unchanged twice: claimed, queued (QUEUED, source inbox, serve.inbox_job's
    options, the file's bytes) and moved to accepted/ as 0600; logged with id and name."""
    folder = config.serve.inbox
    assert folder is not None
    _drop(folder, "ct-cohort.csv", GOOD)
    assert [] == inbox.scan()  # first sight: it may still be being written
    with capture_logs() as logs:
        results = inbox.scan()
    assert 1 == len(results)
    job = results[0].job
    assert job is not None
    assert (JobState.QUEUED, "inbox", "ct-cohort", "ct-cohort.csv") == (
        job.state,
        job.source,
        job.name,
        job.queryfile_name,
    )
    assert JobOptions(save=True) == job.options
    assert GOOD == store.job_queryfile(job.id)
    accepted = folder / "accepted" / "ct-cohort.csv"
    assert accepted == results[0].path
    assert GOOD == accepted.read_bytes()
    assert 0o600 == _mode(accepted)
    assert not (folder / "ct-cohort.csv").exists()
    assert [] == list((folder / CLAIMED / "a").iterdir())
    event = next(e for e in logs if e["event"] == "inbox_accepted")
    assert (job.id, "ct-cohort.csv") == (event["job_id"], event["file"])


def test_an_invalid_file_is_rejected_with_every_located_message(
    inbox: Inbox,
    store: JobStore,
    config: Config,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """rejected/bad.csv plus bad.csv.errors.txt holding what ``pacsman validate bad.csv``
    prints, line for line; no job."""
    folder = config.serve.inbox
    assert folder is not None
    _drop(folder, "bad.csv", BAD)
    inbox.scan()
    with capture_logs() as logs:
        results = inbox.scan()
    assert 1 == len(results)
    assert results[0].job is None
    assert [] == store.jobs()
    rejected = folder / "rejected" / "bad.csv"
    errors = folder / "rejected" / "bad.csv.errors.txt"
    assert BAD == rejected.read_bytes()
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "bad.csv").write_bytes(BAD)
    monkeypatch.chdir(copy)
    assert 2 == main(["validate", "bad.csv"])
    printed = capsys.readouterr().err.splitlines()[1:]  # after "N problem(s) in ..."
    assert len(printed) >= 3
    assert printed == errors.read_text(encoding="utf-8").splitlines()
    assert list(results[0].problems) == printed
    assert (0o600, 0o600) == (_mode(rejected), _mode(errors))
    event = next(e for e in logs if e["event"] == "inbox_rejected")
    assert ("bad.csv", 3) == (event["file"], event["problems"])


def test_a_file_that_is_no_query_file_is_rejected_with_the_reason(
    inbox: Inbox, config: Config
) -> None:
    """A .docx dropped by mistake: rejected, the errors file says what a query file is."""
    folder = config.serve.inbox
    assert folder is not None
    _drop(folder, "notes.docx", b"PK\x03\x04")
    inbox.scan()
    inbox.scan()
    text = (folder / "rejected" / "notes.docx.errors.txt").read_text(encoding="utf-8")
    assert "notes.docx: a query file is .csv" in text


def test_files_still_being_written_are_not_touched(
    inbox: Inbox, store: JobStore, config: Config
) -> None:
    """``.part``, dotfiles and Office lock files never; a growing file only once it has
    stayed the same for two looks."""
    folder = config.serve.inbox
    assert folder is not None
    waiting = ["q.csv.part", "upload.CSV.filepart", ".q.csv.Xy12", "~$cohort.xlsx"]
    for name in waiting:
        _drop(folder, name, GOOD)
    growing = _drop(folder, "growing.csv", GOOD[:20])
    for _ in range(2):
        assert [] == inbox.scan()
        with growing.open("ab") as out:
            out.write(GOOD[20:40])
    assert [] == store.jobs()
    assert all((folder / name).exists() for name in [*waiting, "growing.csv"])
    assert [] == inbox.scan()  # unchanged since the last look now: taken by the next one
    assert ["growing.csv"] == [r.name for r in inbox.scan()]
    assert all((folder / name).exists() for name in waiting)


def test_two_watchers_on_one_folder_queue_each_file_once(config: Config) -> None:
    """Two nodes (two job-store connections) racing on one folder: each file is claimed by
    exactly one, queued once, and filed once; the loser moves on quietly."""
    folder = config.serve.inbox
    assert folder is not None
    names = [f"q{i:02d}.csv" for i in range(24)]
    with JobStore(config.jobstore) as first, JobStore(config.jobstore) as second:
        watchers = [Inbox(first, config, node_name="a"), Inbox(second, config, node_name="b")]
        for watcher in watchers:
            watcher.scan()
        for name in names:
            _drop(folder, name, GOOD)
        for watcher in watchers:
            assert [] == watcher.scan()
        start = threading.Barrier(2)
        taken: list[list[str]] = [[], []]

        def look(k: int) -> None:
            start.wait(timeout=10)
            taken[k] = [r.name for r in watchers[k].scan()]

        threads = [threading.Thread(target=look, args=(k,)) for k in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        jobs = first.jobs()
    assert sorted(names) == sorted(taken[0] + taken[1])
    assert sorted(names) == sorted(job.queryfile_name for job in jobs)
    assert sorted(names) == sorted(p.name for p in (folder / "accepted").iterdir())
    assert [] == [p for p in folder.iterdir() if p.is_file()]


def test_folders_are_0700_and_files_0600_whatever_the_umask(
    store: JobStore, config: Config
) -> None:
    """accepted/, rejected/, .claimed/ and the node's claim folder are made 0700; the files
    filed there are 0600 although they were dropped 0644 under umask 022."""
    folder = config.serve.inbox
    assert folder is not None
    old = os.umask(0o022)
    try:
        inbox = Inbox(store, config)
        inbox.scan()
        _drop(folder, "good.csv", GOOD, 0o644)
        _drop(folder, "bad.csv", BAD, 0o644)
        inbox.scan()
        inbox.scan()
    finally:
        os.umask(old)
    for name in ("accepted", "rejected", CLAIMED, f"{CLAIMED}/a"):
        assert 0o700 == _mode(folder / name), name
    for name in ("accepted/good.csv", "rejected/bad.csv", "rejected/bad.csv.errors.txt"):
        assert 0o600 == _mode(folder / name), name


def test_a_file_of_the_same_name_never_overwrites_one_filed_before(
    inbox: Inbox, config: Config
) -> None:
    """The second q.csv becomes accepted/q-2.csv; the second bad one rejected/bad-2.csv with
    bad-2.csv.errors.txt."""
    folder = config.serve.inbox
    assert folder is not None
    for round_ in range(2):
        _drop(folder, "q.csv", GOOD + f"P9{round_},20240101,S9,E9\n".encode())
        _drop(folder, "bad.csv", BAD)
        inbox.scan()
        inbox.scan()
    accepted = sorted(p.name for p in (folder / "accepted").iterdir())
    rejected = sorted(p.name for p in (folder / "rejected").iterdir())
    assert ["q-2.csv", "q.csv"] == accepted
    assert ["bad-2.csv", "bad-2.csv.errors.txt", "bad.csv", "bad.csv.errors.txt"] == rejected
    assert b"P91," in (folder / "accepted" / "q-2.csv").read_bytes()


def test_a_file_a_crash_left_claimed_is_taken_up_at_start(store: JobStore, config: Config) -> None:
    """A claimed file never queued is queued by the next start; one whose job was queued
    before the crash is filed in accepted/ without a second job."""
    folder = config.serve.inbox
    assert folder is not None
    claimed = folder / CLAIMED / "a"
    claimed.mkdir(parents=True)
    _drop(claimed, "never.csv", GOOD)
    done = _drop(claimed, "queued.csv", GOOD + b"P3,20240107,S3,E3\n")
    written = datetime.now(UTC) - timedelta(minutes=1)
    os.utime(done, (written.timestamp(), written.timestamp()))
    before = queue_job(
        store,
        config,
        filename="queued.csv",
        content=done.read_bytes(),
        options=JobOptions(save=True),
        source="inbox",
    )
    results = {r.name: r for r in Inbox(store, config).scan()}
    assert {"never.csv", "queued.csv"} == set(results)
    queued = results["queued.csv"].job
    assert queued is not None
    assert before.id == queued.id
    assert 2 == len(store.jobs())
    assert ["never.csv", "queued.csv"] == sorted(p.name for p in (folder / "accepted").iterdir())
    assert [] == list(claimed.iterdir())


def test_set_folder_watches_another_folder(inbox: Inbox, tmp_path: Path) -> None:
    """SIGHUP's new inbox path: the next looks watch it (made 0700 with its folders)."""
    other = tmp_path / "other-inbox"
    inbox.set_folder(other)
    assert [] == inbox.scan()
    _drop(other, "q.csv", GOOD)
    inbox.scan()
    assert ["q.csv"] == [r.name for r in inbox.scan()]
    assert 0o700 == _mode(other / "accepted")
    inbox.set_folder(None)
    assert [] == inbox.scan()


def test_serve_inbox_job_gives_the_options_and_priority(tmp_path: Path) -> None:
    """``serve.inbox_job``: push implies save and anonymize, as --push does; the priority
    is the job's.  A PACS node the config lacks is refused when the inbox is built."""
    config = _config(tmp_path, "  inbox_job:\n    push: xnat\n    pacs: orthanc\n    priority: 7\n")
    folder = config.serve.inbox
    assert folder is not None
    with JobStore(config.jobstore) as store:
        inbox = Inbox(store, config)
        inbox.scan()
        _drop(folder, "q.csv", GOOD)
        inbox.scan()
        job = inbox.scan()[0].job
    assert job is not None
    assert JobOptions(save=True, anonymize=True, push="xnat", pacs="orthanc") == job.options
    assert 7 == job.priority
    wrong = _config(tmp_path, "  inbox_job:\n    pacs: nowhere\n")
    with JobStore(wrong.jobstore) as store, pytest.raises(ConfigError, match="nowhere"):
        Inbox(store, wrong)
