"""``pacsman dqr`` against the hospital's ``import-tester`` way, on the same cohort and the
same DQR faults, in one run (issue 16 A).

Both sides drive the XNAT emulator's DQR (a fresh emulator per side, in this process) in
front of one real Orthanc holding the cohort:

* reference: ``benchmarks/_import_tester.py``, a re-creation of the hospital's script as the
  issue describes it (we do not have the original): one ``POST /xapi/dqr/import`` per study,
  ``--interval`` seconds apart, a study retried only when the HTTP call itself fails (up to
  50 times), then trusting XNAT (no queue, no history, no session check);
* pacsman: the whole command a user runs, ``pacsman dqr --queryfile q.csv --config cfg.yaml``
  (the installed entry script, a subprocess) with ``dqr.query: pacs`` (counts verified by
  pacsman's own C-FIND), ``dqr.replace_partial: true`` and the same interval; the other
  timers scaled down (``--poll-interval``, ``--stale``).

The same fault mix is set on each emulator before its run (``--faults``); the counted
switches hit the first requests that leave XNAT's queue, one fault per request, in the
emulator's order (stuck_processing, stuck_issued, failed, partial, zero), and ``import_500``
the first import calls. After each tool ends, the emulator is left until its queue and archive have
not changed for ``--quiet`` seconds (bounded by ``--deadline``), then the archive is read:
every stored file's SOPInstanceUID against every instance Orthanc holds for the study.

Per side: studies whose session is complete, partial, empty (0 files), missing, duplicated
(the study in more than one session); what the tool claimed (import-tester: studies
"submitted"; pacsman: exit code, summary, states from ``pacsman status --json``); wall time;
import calls (the emulator's request log). Then the ratios: complete sessions pacsman /
reference; wall time, pacsman's from exec to exit (it only exits once every study is
verified) over the reference's until XNAT settled (its last POST, then the last change in
XNAT's requests or archive; the ``--quiet`` wait itself is not counted); and wall time per
complete session. ``dqr.max_in_flight`` is pacsman's default, 1 (``--max-in-flight``).
Exit status 0 when pacsman left every study complete, once.

    python3 benchmarks/dqr_faults.py                     # 30 studies x 20 MR instances
    python3 benchmarks/dqr_faults.py --quick             # 5 studies, smoke test
    python3 benchmarks/dqr_faults.py --json /tmp/dqr.json
    python3 benchmarks/dqr_faults.py --faults partial=3,drop=2,zero=2,failed=2,import_500=1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError

from pacsman.testing.orthanc import OrthancServer
from pacsman.testing.synthetic import StudySpec, benchmark_cohort, iter_datasets
from pacsman.testing.xnat_emulator import DqrPacs, XnatEmulator

PROJECT = "DQRBENCH"
SCRIPT = 'version "6.1"\n(0010,0030) := ""\n'
USER, PASSWORD = "admin", "secret"
HERE = Path(__file__).resolve().parent
#: ``--faults`` names -> the emulator's switches.
FAULT_NAMES = {
    "partial": "dqr_partial",
    "drop": "dqr_partial_drop",
    "zero": "dqr_zero_files",
    "failed": "dqr_failed",
    "stuck_issued": "dqr_stuck_issued",
    "stuck_processing": "dqr_stuck_processing",
    "import_500": "dqr_import_status_count",
}
DEFAULT_FAULTS = "partial=3,drop=2,zero=2,failed=2,stuck_issued=1,import_500=1"
QUICK_FAULTS = "partial=1,drop=2,zero=1,failed=1,stuck_issued=1,import_500=1"


# -- the cohort ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Study:
    """One study of the cohort: its labels and the SOPInstanceUIDs Orthanc holds for it."""

    uid: str
    subject: str
    session: str
    instances: frozenset[str]


def load_cohort(orthanc: OrthancServer, specs: Sequence[StudySpec]) -> list[Study]:
    """Upload the cohort, then read back from Orthanc what it holds per study."""
    orthanc.upload_datasets(ds for spec in specs for ds in iter_datasets(spec))
    held: dict[str, set[str]] = {}
    for study in orthanc.studies():
        uid = study["MainDicomTags"]["StudyInstanceUID"]
        instances = orthanc.rest("GET", f"/studies/{study['ID']}/instances")
        held[uid] = {i["MainDicomTags"]["SOPInstanceUID"] for i in instances}
    for spec in specs:
        want = sum(series.n_instances for series in spec.series)
        if len(held.get(str(spec.study_instance_uid), ())) != want:
            raise SystemExit(f"Orthanc does not hold the {want} instances of a cohort study")
    return [
        Study(
            str(spec.study_instance_uid),
            f"BSUBJ{n:04d}",
            f"BSESS{n:04d}",
            frozenset(held.get(str(spec.study_instance_uid), ())),
        )
        for n, spec in enumerate(specs, 1)
    ]


def write_queryfile(path: Path, cohort: Sequence[Study]) -> Path:
    """The one query file both sides read: StudyInstanceUID, Subject, Session."""
    rows = "".join(f"{s.uid},{s.subject},{s.session}\n" for s in cohort)
    path.write_text("StudyInstanceUID,Subject,Session\n" + rows, encoding="utf-8")
    return path


# -- the fault mix ------------------------------------------------------------------------------


def parse_faults(text: str) -> dict[str, int]:
    """``partial=3,drop=2,...`` -> the emulator's switch values."""
    switches: dict[str, int] = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, _, value = item.partition("=")
        if name not in FAULT_NAMES or not value.isdigit():
            known = ", ".join(FAULT_NAMES)
            raise SystemExit(f"--faults: {item!r} is not NAME=COUNT with NAME one of {known}")
        switches[FAULT_NAMES[name]] = int(value)
    if switches.get("dqr_import_status_count"):
        switches["dqr_import_status"] = 500
    else:
        switches.pop("dqr_import_status_count", None)
    return switches


# -- one side -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one side left in XNAT, what it claimed, what it cost."""

    side: str
    wall_s: float
    settled_s: float
    import_calls: int
    import_statuses: dict[str, int]
    requests: int
    request_states: dict[str, int]
    complete: int = 0
    partial: int = 0
    empty: int = 0
    missing: int = 0
    duplicated: int = 0
    wrong_label: int = 0
    sessions: int = 0
    exit_code: int | None = None
    claimed: str = ""
    claimed_states: dict[str, int] = field(default_factory=dict)
    #: Studies the tool said it got through: "submitted" (import-tester), DONE (pacsman).
    claimed_ok: int = 0
    output: str = ""
    #: Run once XNAT has settled (``pacsman status``), so that it does not delay the settle.
    follow_up: Callable[[Outcome], None] | None = field(default=None, repr=False)


def _emulator(data: Path, orthanc: OrthancServer, session_idle: float) -> XnatEmulator:
    pacs = DqrPacs(orthanc.ae_title, "127.0.0.1", orthanc.dicom_port, "Hospital PACS")
    return XnatEmulator(
        data,
        users={USER: PASSWORD},
        projects=[PROJECT],
        dqr_pacs=[pacs],
        dqr_session_idle=session_idle,
        anonymization_scripts={PROJECT: SCRIPT},
    )


def _snapshot(xnat: XnatEmulator) -> tuple[Any, ...]:
    statuses = tuple(
        (r["id"], r["statuses"][-1] if r["statuses"] else "") for r in xnat.dqr_requests()
    )
    files = tuple((s.label, s.file_count) for s in xnat.sessions(PROJECT))
    return statuses, files


def settle(xnat: XnatEmulator, quiet: float, deadline: float) -> float:
    """Wait until the emulator's requests and archive have not changed for ``quiet`` seconds
    (or ``deadline``, a monotonic time, passes); returns the monotonic time of the last change.
    """
    last, changed = _snapshot(xnat), time.monotonic()
    while time.monotonic() - changed < quiet and time.monotonic() < deadline:
        time.sleep(0.1)
        now = _snapshot(xnat)
        if now != last:
            last, changed = now, time.monotonic()
    return changed


def _sop_uids(files: Sequence[Path]) -> set[str]:
    found = set()
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
            found.add(str(ds.SOPInstanceUID))
        except (InvalidDicomError, AttributeError):  # not DICOM (e.g. a catalog): not counted
            continue
    return found


def judge_archive(xnat: XnatEmulator, cohort: Sequence[Study], outcome: Outcome) -> None:
    """Classify each study by the sessions holding it, reading every stored file."""
    sessions = xnat.sessions(PROJECT)
    outcome.sessions = len(sessions)
    by_study: dict[str, list[Any]] = {}
    for s in sessions:
        by_study.setdefault(s.uid, []).append(s)
    for study in cohort:
        held = by_study.get(study.uid, [])
        if not held:
            outcome.missing += 1
            continue
        if len(held) > 1:
            outcome.duplicated += 1
        best = max(held, key=lambda s: s.file_count)
        if (best.label, best.subject) != (study.session, study.subject):
            outcome.wrong_label += 1
        stored = _sop_uids(xnat.dicom_files(PROJECT, best.label))
        if not stored:
            outcome.empty += 1
        elif study.instances <= stored:
            outcome.complete += 1
        else:
            outcome.partial += 1


def _calls(xnat: XnatEmulator) -> tuple[int, dict[str, int]]:
    posts = [r for r in xnat.request_log if r.method == "POST" and r.path == "/xapi/dqr/import"]
    return len(posts), dict(Counter(str(r.status) for r in posts))


def _request_states(xnat: XnatEmulator) -> tuple[int, dict[str, int]]:
    found = xnat.dqr_requests()
    last = Counter(r["statuses"][-1] if r["statuses"] else "?" for r in found)
    return len(found), dict(last)


@dataclass(frozen=True)
class Setup:
    """What both sides share."""

    orthanc: OrthancServer
    cohort: list[Study]
    queryfile: Path
    work: Path
    args: argparse.Namespace
    faults: dict[str, int]


def _env(setup: Setup, home: Path) -> dict[str, str]:
    env = dict(os.environ, XNAT_USER=USER, XNAT_PASS=PASSWORD)
    env["XDG_CONFIG_HOME"] = str(home / "xdg")
    return env


Runner = Callable[[Setup, XnatEmulator, Path, float], Outcome]


def run_side(setup: Setup, side: str, runner: Runner) -> Outcome:
    """A fresh emulator with the fault mix, the tool, the settle, the archive read."""
    folder = setup.work / side
    folder.mkdir(parents=True)
    args = setup.args
    with _emulator(folder / "xnat", setup.orthanc, args.session_idle) as xnat:
        setup.orthanc.add_modality("XNAT", "XNAT", "127.0.0.1", xnat.dqr_receiver_port)
        xnat.faults.update(dict(setup.faults))
        deadline = time.monotonic() + args.deadline
        outcome = runner(setup, xnat, folder, deadline)
        ended = time.monotonic()
        last_change = settle(xnat, args.quiet, deadline)
        outcome.settled_s = outcome.wall_s + max(0.0, last_change - ended)
        if outcome.follow_up is not None:
            outcome.follow_up(outcome)
        outcome.import_calls, outcome.import_statuses = _calls(xnat)
        outcome.requests, outcome.request_states = _request_states(xnat)
        judge_archive(xnat, setup.cohort, outcome)
    return outcome


def _run(
    argv: Sequence[str], env: Mapping[str, str], deadline: float, log: Path
) -> tuple[int, str, float]:
    """Run a tool to its exit (killed at ``deadline``); returns exit code, stdout, wall s.
    Its stderr (pacsman's JSON log) goes to ``log``, not into the figures."""
    started = time.monotonic()
    with log.open("w", encoding="utf-8") as err:
        try:
            done = subprocess.run(
                list(argv),
                env=dict(env),
                stdout=subprocess.PIPE,
                stderr=err,
                text=True,
                timeout=max(1.0, deadline - started),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            return -1, out + "\n[killed at the deadline]", time.monotonic() - started
    return done.returncode, done.stdout, time.monotonic() - started


def run_reference(setup: Setup, xnat: XnatEmulator, folder: Path, deadline: float) -> Outcome:
    """The import-tester way: submit each study, trust XNAT."""
    report = folder / "import-tester.json"
    argv = [
        sys.executable,
        str(HERE / "_import_tester.py"),
        *("--url", xnat.url, "--project", PROJECT, "--pacs-id", "1"),
        *("--receiver", f"XNAT:{xnat.dqr_receiver_port}", "--queryfile", str(setup.queryfile)),
        *("--interval", str(setup.args.interval), "--max-tries", "50", "--report", str(report)),
    ]
    code, output, wall = _run(argv, _env(setup, folder), deadline, folder / "stderr.log")
    outcome = Outcome("import-tester", wall, wall, 0, {}, 0, {}, exit_code=code, output=output)
    if report.is_file():
        found = json.loads(report.read_text(encoding="utf-8"))
        outcome.claimed = f"{found['submitted']} of {len(setup.cohort)} studies submitted"
        outcome.claimed_states = {"submitted": found["submitted"], "gave up": found["given_up"]}
        outcome.claimed_ok = found["submitted"]
    return outcome


def _pacsman_argv() -> list[str]:
    script = Path(sys.executable).parent / "pacsman"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [sys.executable, "-m", "pacsman"]


def write_config(setup: Setup, xnat: XnatEmulator, folder: Path) -> Path:
    """pacsman's config: one PACS node (Orthanc), XNAT, the dqr section scaled down."""
    a = setup.args
    stale = a.stale
    text = (
        "local:\n  ae_title: PACSMAN\n"
        "pacs:\n  orthanc:\n    host: 127.0.0.1\n"
        f"    port: {setup.orthanc.dicom_port}\n    called_ae_title: {setup.orthanc.ae_title}\n"
        f"store_root: {folder}/data\njobstore: {folder}/jobs.sqlite\n"
        f"xnat:\n  url: {xnat.url}\n  project: {PROJECT}\n"
        "dqr:\n  pacs_id: 1\n  receiver_ae_title: XNAT\n"
        f"  receiver_port: {xnat.dqr_receiver_port}\n  query: pacs\n"
        f"  max_in_flight: {a.max_in_flight}\n  interval: {a.interval}\n  max_attempts: 50\n"
        f"  backoff_max: {a.backoff_max}\n  poll_interval: {a.poll_interval}\n"
        "  replace_partial: true\n  stale_after:\n"
        f"    queued: {stale}\n    processing: {stale}\n    issued: {stale}\n"
        f"    received: {stale}\n"
    )
    path = folder / "pacsman.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def _status_states(argv: Sequence[str], env: Mapping[str, str]) -> tuple[dict[str, int], str]:
    """The studies per state that ``pacsman status --json`` reports, or what went wrong."""
    done = subprocess.run(
        list(argv), env=dict(env), capture_output=True, text=True, timeout=60, check=False
    )
    try:
        found = json.loads(done.stdout)
        studies = found["studies"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return {}, (done.stdout + done.stderr).strip()[:500]
    return {str(k): int(v) for k, v in studies.items()}, ""


def run_pacsman(setup: Setup, xnat: XnatEmulator, folder: Path, deadline: float) -> Outcome:
    """The whole command a user runs, then ``pacsman status`` for what it says it did."""
    config = write_config(setup, xnat, folder)
    env = _env(setup, folder)
    pacsman = _pacsman_argv()
    argv = [*pacsman, "dqr", "--queryfile", str(setup.queryfile), "--config", str(config)]
    code, output, wall = _run(argv, env, deadline, folder / "pacsman.log")
    outcome = Outcome("pacsman dqr", wall, wall, 0, {}, 0, {}, exit_code=code, output=output)
    summary = [line for line in output.splitlines() if line.startswith("  studies")]
    outcome.claimed = summary[-1].strip() if summary else f"exit {code}, no summary"
    status = [*pacsman, "status", "--json", "--config", str(config)]

    def ask_status(outcome: Outcome) -> None:
        outcome.claimed_states, problem = _status_states(status, env)
        outcome.claimed_ok = outcome.claimed_states.get("done", 0)
        if problem:
            outcome.output += "\n[pacsman status --json]: " + problem

    outcome.follow_up = ask_status
    return outcome


# -- the report ---------------------------------------------------------------------------------


def _ratio(a: float, b: float) -> float | None:
    return None if b == 0 else a / b


def table(outcomes: Sequence[Outcome], n: int) -> list[str]:
    """The side-by-side table, then what each tool claimed and how XNAT's requests ended."""
    rows = [
        ("complete sessions", "complete"),
        ("partial sessions", "partial"),
        ("empty sessions (0 files)", "empty"),
        ("missing", "missing"),
        ("duplicated (in > 1 session)", "duplicated"),
        ("wrong subject/session label", "wrong_label"),
        ("sessions in the project", "sessions"),
        ("claimed submitted / DONE", "claimed_ok"),
        ("import calls", "import_calls"),
        ("DQR requests queued", "requests"),
    ]
    width = 30
    head = f"{'':{width}}" + "".join(f"{o.side:>22}" for o in outcomes)
    lines = [f"{n} studies", head]
    for label, key in rows:
        lines.append(f"{label:{width}}" + "".join(f"{getattr(o, key)!s:>22}" for o in outcomes))
    lines.append(
        f"{'wall s (tool exit)':{width}}" + "".join(f"{o.wall_s:>22.1f}" for o in outcomes)
    )
    lines.append(
        f"{'wall s (XNAT settled)':{width}}" + "".join(f"{o.settled_s:>22.1f}" for o in outcomes)
    )
    lines.append(f"{'exit code':{width}}" + "".join(f"{o.exit_code!s:>22}" for o in outcomes))
    per = [f"{o.settled_s / o.complete:>22.2f}" if o.complete else f"{'-':>22}" for o in outcomes]
    lines.append(f"{'s per complete session':{width}}" + "".join(per))
    for o in outcomes:
        lines.append(f"{o.side} claimed: {o.claimed}; states {o.claimed_states}")
        lines.append(
            f"{o.side} import answers {o.import_statuses}; requests ended {o.request_states}"
        )
    return lines


def ratios(reference: Outcome, pacsman: Outcome) -> dict[str, float | None]:
    """Complete sessions, wall time (pacsman to its exit, the reference until XNAT settled)
    and wall time per complete session, pacsman / reference."""
    per_p, per_r = (_ratio(o.settled_s, o.complete) for o in (pacsman, reference))
    return {
        "complete_pacsman_over_reference": _ratio(pacsman.complete, reference.complete),
        "wall_pacsman_over_reference": _ratio(pacsman.wall_s, reference.settled_s),
        "s_per_complete_pacsman_over_reference": (
            None if per_p is None or per_r is None else _ratio(per_p, per_r)
        ),
    }


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}x"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=30)
    parser.add_argument("--instances", type=int, default=20, help="MR instances per study")
    parser.add_argument("--faults", default=None, help=f"default: {DEFAULT_FAULTS}")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between imports")
    parser.add_argument("--poll-interval", type=float, default=0.1)
    parser.add_argument("--stale", type=float, default=5.0, help="every dqr.stale_after timer")
    parser.add_argument("--backoff-max", type=float, default=1.0)
    parser.add_argument("--max-in-flight", type=int, default=1)
    parser.add_argument("--session-idle", type=float, default=0.5, help="emulator's idle time")
    parser.add_argument("--quiet", type=float, default=3.0, help="XNAT idle seconds = settled")
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds per side")
    parser.add_argument("--quick", action="store_true", help="5 studies, smaller fault mix")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--verbose", action="store_true", help="print each tool's output")
    parser.add_argument(
        "--workdir", type=Path, help="keep configs, logs and XNAT data here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.studies = 5
    if args.workdir is not None and args.workdir.exists() and any(args.workdir.iterdir()):
        raise SystemExit(f"--workdir {args.workdir} is not empty: give a new or empty folder")
    faults = parse_faults(args.faults or (QUICK_FAULTS if args.quick else DEFAULT_FAULTS))
    specs = benchmark_cohort(
        args.studies * args.instances,
        n_studies=args.studies,
        series_per_study=2,
        rows=64,
        columns=64,
    )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; faults {faults}")
    with ExitStack() as stack:
        orthanc = stack.enter_context(OrthancServer())
        temporary = tempfile.TemporaryDirectory(prefix="pacsman-dqr-bench-")
        work = args.workdir or Path(stack.enter_context(temporary))
        work.mkdir(parents=True, exist_ok=True)
        cohort = load_cohort(orthanc, specs)
        queryfile = write_queryfile(work / "q.csv", cohort)
        setup = Setup(orthanc, cohort, queryfile, work, args, faults)
        reference = run_side(setup, "reference", run_reference)
        pacsman = run_side(setup, "pacsman", run_pacsman)
    outcomes = [reference, pacsman]
    for o in outcomes if args.verbose else ():
        print(f"--- {o.side} output ---\n{o.output.rstrip()}")
    print("\n".join(table(outcomes, len(cohort))))
    found = ratios(reference, pacsman)
    print(
        f"complete sessions pacsman / reference: {_fmt(found['complete_pacsman_over_reference'])}; "
        f"wall pacsman (exit) / reference (settled): {_fmt(found['wall_pacsman_over_reference'])}; "
        f"s per complete session: {_fmt(found['s_per_complete_pacsman_over_reference'])}"
    )
    print(f"load average at the end {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json is not None:
        payload = {
            "studies": len(cohort),
            "instances_per_study": args.instances,
            "faults": faults,
            "settings": {k: v for k, v in vars(args).items() if k != "json"},
            "sides": [asdict(o) | {"follow_up": None} for o in outcomes],
            "ratios": found,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str), encoding="utf-8")
    return 0 if pacsman.complete == len(cohort) and pacsman.duplicated == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
