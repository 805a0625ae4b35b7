"""``pacsman serve`` as a real subprocess (issue 13): the queue, global PACS courtesy, the
systemd protocol on a stand-in NOTIFY_SOCKET, the SIGTERM drain, SIGHUP and the disk guard.

The PACS is the fake PACS, which counts the associations open at once and records every
C-MOVE in order; a Unix datagram socket records what the service tells systemd.
"""

# ruff: noqa: SIM300 - STYLE.md asks for `expected == actual` in assertions

from __future__ import annotations

import json
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacsman.cli import main
from pacsman.jobstore import JobStore
from pacsman.jobstore.jobs import FINAL_STATES, JobState
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.net import free_port
from pacsman.testing.service import ServiceProcess, wait_for_jobs
from pacsman.testing.synthetic import SeriesSpec, StudySpec
from tests.helpers import write_config, write_queryfile


def _studies(job: int, count: int, *, series: int = 1, instances: int = 4) -> list[StudySpec]:
    return [
        StudySpec(
            patient_id=f"SVC{job}{n:02d}",
            patient_name=f"Service^Job{job}",
            study_date="20240301",
            accession_number=f"A{job}{n:03d}",
            study_description=f"MR job {job}",
            series=tuple(
                SeriesSpec(series_number=s + 1, series_description=f"S{s}", n_instances=instances)
                for s in range(series)
            ),
            uid_seed=f"job{job}-{n}",
        )
        for n in range(count)
    ]


@pytest.fixture
def setup(
    tmp_path: Path, fake_pacs: Callable[..., FakePacs]
) -> Callable[..., tuple[Path, FakePacs]]:
    """``setup(specs, serve="...", node="...")``: a fake PACS serving ``specs`` and a config
    for ``pacsman serve`` against it."""

    def make(specs: list[StudySpec], *, serve: str = "", node: str = "") -> tuple[Path, FakePacs]:
        scp = free_port()
        pacs = fake_pacs(specs, move_destinations={"PACSMAN": ("127.0.0.1", scp)})
        extra = (
            f"serve:\n  node_name: head1\n  min_free_gb: 0\n  http:\n    port: {free_port()}\n"
            + "".join(f"  {line}\n" for line in serve.strip().splitlines())
        )
        config = write_config(
            tmp_path,
            port=pacs.port,
            called_ae_title=pacs.ae_title,
            node="fake",
            local_port=scp,
            extra_node=node,
            extra=extra,
        )
        return config, pacs

    return make


def _submit(config: Path, specs: list[StudySpec], name: str, *args: str) -> int:
    folder = config.parent
    text = "StudyInstanceUID\n" + "".join(f"{s.study_instance_uid}\n" for s in specs)
    queryfile = write_queryfile(folder, text, name=f"{name}.csv")
    assert 0 == main(["submit", str(queryfile), "--save", "--config", str(config), *args])
    with JobStore(config.parent / "jobs.sqlite", read_only=True) as store:
        return max(job.id for job in store.jobs())


@pytest.fixture
def service() -> Iterator[Callable[..., ServiceProcess]]:
    started: list[ServiceProcess] = []

    def start(config: Path, **kwargs: object) -> ServiceProcess:
        process = ServiceProcess(config, **kwargs).start()  # type: ignore[arg-type]
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop(timeout=30)


def test_three_jobs_share_two_associations_fairly(
    setup: Callable[..., tuple[Path, FakePacs]], service: Callable[..., ServiceProcess]
) -> None:
    """3 jobs at once against max_associations 2: never more than 2 associations, 2 reached,
    and every job starts a retrieve before any job starts its third."""
    jobs = {job: _studies(job, 4) for job in (1, 2, 3)}
    config, pacs = setup(
        [s for specs in jobs.values() for s in specs],
        serve="max_jobs: 3",
        node="max_associations: 2",
    )
    # Retrieves long beside a job's start-up (claim, query file, C-ECHO, C-FIND), so that a job
    # starting late on a loaded machine still asks for its first retrieve in time.
    pacs.faults = Faults(pending_delay=0.15)
    ids = [_submit(config, specs, f"job{job}") for job, specs in jobs.items()]
    process = service(config)
    process.wait_ready()
    done = wait_for_jobs(config.parent / "jobs.sqlite", ids, FINAL_STATES, service=process)
    assert [JobState.DONE] * 3 == [job.state for job in done], [j.detail for j in done]
    assert 2 == pacs.peak_associations
    owner = {s.study_instance_uid: job for job, specs in jobs.items() for s in specs}
    for ds in pacs.datasets:
        owner[str(ds.SOPInstanceUID)] = owner[str(ds.StudyInstanceUID)]
        owner[str(ds.SeriesInstanceUID)] = owner[str(ds.StudyInstanceUID)]
    moves = [owner[c.split()[-1]] for c in pacs.calls if c.startswith("C-MOVE")]
    started: dict[int, int] = {}
    for position, job in enumerate(moves):
        started[job] = started.get(job, 0) + 1
        if started[job] == 3:
            assert {1, 2, 3} <= set(moves[:position]), moves
            break
    else:
        pytest.fail(f"no job started a third retrieve: {moves}")


def test_tells_systemd_ready_status_watchdog_and_stopping_in_order(
    setup: Callable[..., tuple[Path, FakePacs]], service: Callable[..., ServiceProcess]
) -> None:
    """READY once the store, SCP and HTTP are up; STATUS and WATCHDOG while it runs;
    STOPPING on SIGTERM; exit 0."""
    config, _ = setup(_studies(1, 1))
    process = service(config, watchdog_usec=1_000_000)
    process.wait_ready()
    status = process.wait_message("STATUS=", after=process.messages.index("READY=1"))
    assert "PACS fake 0/1 associations" in status
    process.wait_message("WATCHDOG=1", after=process.messages.index("READY=1"))
    process.signal(signal.SIGTERM)
    assert 0 == process.wait(30)
    messages = process.messages
    ready, stopping = messages.index("READY=1"), messages.index("STOPPING=1")
    assert ready < messages.index(status) < stopping
    assert ready < messages.index("WATCHDOG=1") < stopping


def test_sigterm_drains_a_slow_retrieve_and_leaves_the_job_resumable(
    setup: Callable[..., tuple[Path, FakePacs]], service: Callable[..., ServiceProcess]
) -> None:
    """SIGTERM in the middle of a slow job: STOPPING, no new series is started, the one in
    flight finishes, exit 0; the job is QUEUED again and the next start finishes it."""
    specs = _studies(1, 6, instances=10)
    config, pacs = setup(specs, serve="drain_timeout: 20")
    pacs.faults = Faults(pending_delay=0.1)
    job_id = _submit(config, specs, "slow")
    process = service(config)
    process.wait_ready()
    _wait_for_move(pacs, count=2)
    process.signal(signal.SIGTERM)
    assert 0 == process.wait(40)
    assert "STOPPING=1" in process.messages
    with JobStore(config.parent / "jobs.sqlite", read_only=True) as store:
        job = store.job(job_id)
        series = store.series_for_retrieve(store.run_by_id(job.run_id or 0))
    assert JobState.QUEUED == job.state, job.detail
    assert all(s.state.value in ("QUERIED", "COMPLETE") for s in series), series
    assert any(s.state.value == "QUERIED" for s in series)
    moves_before = len([c for c in pacs.calls if c.startswith("C-MOVE SERIES")])
    pacs.faults = Faults()
    again = service(config)
    again.wait_ready()
    wait_for_jobs(config.parent / "jobs.sqlite", [job_id], {JobState.DONE}, service=again)
    moves = len([c for c in pacs.calls if c.startswith("C-MOVE SERIES")])
    assert 6 == moves  # each series once: none retrieved twice
    assert moves_before < 6


def test_sighup_reloads_courtesy_and_names_what_needs_a_restart(
    setup: Callable[..., tuple[Path, FakePacs]], service: Callable[..., ServiceProcess]
) -> None:
    config, _ = setup(_studies(1, 1))
    process = service(config)
    process.wait_ready()
    text = config.read_text(encoding="utf-8")
    changed = text.replace(
        "called_ae_title: FAKEPACS", "called_ae_title: FAKEPACS\n    max_associations: 3"
    )
    config.write_text(
        changed.replace("ae_title: PACSMAN", "ae_title: PACSMAN2", 1), encoding="utf-8"
    )
    after = len(process.messages)
    process.signal(signal.SIGHUP)
    process.wait_message("RELOADING=1", after=after)
    process.wait_message("READY=1", after=after)
    deadline = time.monotonic() + 20
    while "config_reloaded" not in process.log_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    reloaded = [
        json.loads(line) for line in process.log_text().splitlines() if "config_reloaded" in line
    ]
    assert ["local"] == reloaded[-1]["needs_restart"]
    process.wait_message(
        "STATUS=0 job(s) running, PACS fake 0/3 associations", after=after, timeout=15
    )


def test_disk_guard_claims_no_retrieve_and_readyz_says_why(
    setup: Callable[..., tuple[Path, FakePacs]], service: Callable[..., ServiceProcess]
) -> None:
    """Below serve.min_free_gb nothing is retrieved and /readyz is 503 naming the disk; with
    the threshold lowered (SIGHUP) the job goes on by itself."""
    specs = _studies(1, 1)
    config, pacs = setup(specs)
    config.write_text(config.read_text().replace("min_free_gb: 0", "min_free_gb: 1000000"))
    job_id = _submit(config, specs, "disk")
    process = service(config)
    process.wait_ready()
    url = _http_url(config)
    code, body = _get(url + "/readyz")
    assert 503 == code
    assert "serve.min_free_gb" in body
    assert not [c for c in pacs.calls if c.startswith("C-MOVE")]
    config.write_text(config.read_text().replace("min_free_gb: 1000000", "min_free_gb: 0"))
    process.signal(signal.SIGHUP)
    wait_for_jobs(config.parent / "jobs.sqlite", [job_id], {JobState.DONE}, service=process)
    assert 200 == _get(url + "/readyz")[0]


def _wait_for_move(pacs: FakePacs, *, count: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if len([c for c in pacs.calls if c.startswith("C-MOVE SERIES")]) >= count:
            return
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} C-MOVEs in {timeout} s: {pacs.calls}")


def _http_url(config: Path) -> str:
    with JobStore(config.parent / "jobs.sqlite", read_only=True) as store:
        return store.service_nodes()[0].http_url


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            return int(answer.status), answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_two_jobs_selecting_the_same_series_each_get_all_of_it(
    setup: Callable[..., tuple[Path, FakePacs]], service: Callable[..., ServiceProcess]
) -> None:
    """The same study in two jobs at once: their retrievals of a series take turns, and each
    job's folder ends with every instance (none routed to the other job)."""
    specs = _studies(1, 2, series=2, instances=6)
    config, pacs = setup(specs, serve="max_jobs: 2", node="max_associations: 2")
    pacs.faults = Faults(pending_delay=0.02)
    first = _submit(config, specs, "cohort-a")
    second = _submit(config, specs, "cohort-b")
    process = service(config)
    process.wait_ready()
    jobs = wait_for_jobs(config.parent / "jobs.sqlite", [first, second], FINAL_STATES)
    assert [JobState.DONE, JobState.DONE] == [job.state for job in jobs], [j.detail for j in jobs]
    for job in jobs:
        folder = next((config.parent / "data" / "jobs").glob(f"{job.id:05d}-*"))
        files = [p for p in folder.rglob("*.dcm") if "_unrouted" not in p.parts]
        assert 2 * 2 * 6 == len(files), job.name
    moves = [c for c in pacs.calls if c.startswith("C-MOVE SERIES")]
    assert 2 * 2 * 2 == len(moves)  # each job retrieved each series once


def test_a_second_sigterm_aborts_at_once(
    setup: Callable[..., tuple[Path, FakePacs]], service: Callable[..., ServiceProcess]
) -> None:
    """A drain that would take long (drain_timeout 120) ends within seconds on a second
    SIGTERM; the series in flight stay resumable."""
    specs = _studies(1, 2, instances=30)
    config, pacs = setup(specs, serve="drain_timeout: 120")
    pacs.faults = Faults(pending_delay=0.2)
    job_id = _submit(config, specs, "stuck")
    process = service(config)
    process.wait_ready()
    _wait_for_move(pacs, count=1)
    process.signal(signal.SIGTERM)
    process.wait_message("STOPPING=1")
    started = time.monotonic()
    process.signal(signal.SIGTERM)
    assert 0 == process.wait(30)
    assert time.monotonic() - started < 15
    with JobStore(config.parent / "jobs.sqlite", read_only=True) as store:
        job = store.job(job_id)
        series = store.series_for_retrieve(store.run_by_id(job.run_id or 0))
    assert job.state in (JobState.QUEUED, JobState.RUNNING)  # the next start resumes it
    assert {"RETRIEVING", "QUERIED", "FAILED", "INCOMPLETE"} >= {s.state.value for s in series}
