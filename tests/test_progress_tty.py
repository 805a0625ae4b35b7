"""``pacsman --queryfile q.csv --save [--push]`` in a real pseudo-terminal, as a user runs it.

* The live progress display appears, is redrawn in place (one copy on the screen, however
  often it was drawn), log lines scroll above it, and it ends with its final state, followed by
  the summary.
* Ctrl-C (the terminal's ^C: SIGINT to the foreground process group, the de-identify/push
  process included) during retrieval and during the push, and SIGTERM (``kill``) during
  retrieval: exit 130, no traceback from any process, "interrupted; run the same command
  again to resume", no process left; the same command then resumes and completes, redoing
  only what was not done.

The command runs in its own session with the pseudo-terminal as its controlling terminal, so
^C written to the terminal is turned into SIGINT by the kernel, as in a real terminal.  The
PACS is the fake PACS, slowed where a test needs time to press ^C; XNAT is the emulator (the
import slowed); both run in this test process, which ^C cannot reach.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import fcntl
import os
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pacsman.errors import EXIT_INTERRUPTED
from pacsman.testing.fakepacs import FakePacs, Faults
from pacsman.testing.net import free_port, wait_for
from pacsman.testing.synthetic import DEMO_STUDIES
from pacsman.testing.xnat_emulator import XnatEmulator
from tests.helpers import write_config, write_queryfile

PROJECT = "PROJ"
QUERY = "PatientID,Subject,Session\nDEMO001,SUBJ01,SESS01\nDEMO002,SUBJ02,SESS02\n"
#: The two studies: 3 + 2 series, 23 + 13 instances.
SERIES, INSTANCES = 5, 36
SESSIONS = {"SESS01": 23, "SESS02": 13}
INTERRUPTED = "interrupted; run the same command again to resume"
#: Seconds any one command may take here (they take a few).
LIMIT = 90.0
_SHIM = (
    "import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
    "os.execvp(sys.argv[1], sys.argv[1:])"
)
#: Every terminal started, so that the fixture can end what a failed test left running.
_STARTED: list[Terminal] = []
_CSI = re.compile(r"\x1b\[([0-9;?]*)([A-Za-z])")
_OSC = re.compile(r"\x1b\][^\x07\x1b]*(\x07|\x1b\\)")


class Terminal:
    """A command on a pseudo-terminal of ``columns`` x ``rows``: its own session, with the
    terminal as its controlling terminal (so ^C is SIGINT to its foreground process group)."""

    def __init__(self, argv: list[str], env: dict[str, str], *, columns: int = 160) -> None:
        master, slave = os.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
        self.process = subprocess.Popen(
            [sys.executable, "-c", _SHIM, *argv],
            stdin=slave,
            stdout=slave,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self._master = master
        self._data = bytearray()
        self._closed = False
        _STARTED.append(self)

    def kill(self) -> None:
        """SIGKILL whatever of its session still runs (a test that failed half-way)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=LIMIT)
        with contextlib.suppress(OSError):
            os.close(self._master)

    @property
    def output(self) -> str:
        """Everything written to the terminal so far."""
        return self._data.decode("utf-8", errors="replace")

    def _read(self, timeout: float) -> None:
        if self._closed or not select.select([self._master], [], [], timeout)[0]:
            return
        try:
            chunk = os.read(self._master, 65536)
        except OSError as exc:  # EIO: every process let go of the terminal
            if exc.errno != errno.EIO:
                raise
            chunk = b""
        if chunk:
            self._data += chunk
        else:
            self._closed = True

    def wait_for(self, condition: Callable[[], bool], *, what: str, timeout: float = LIMIT) -> None:
        """Read the terminal until ``condition`` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline or (self._closed and not condition()):
                pytest.fail(f"{what}: not seen in {timeout} s; the terminal showed:\n{self.tail}")
            self._read(0.05)

    def control_c(self) -> None:
        """Type ^C."""
        os.write(self._master, b"\x03")

    def finish(self, timeout: float = LIMIT) -> int:
        """Read until the command ends and lets go of the terminal; its exit code."""
        self.wait_for(lambda: self._closed, what="the end of the command", timeout=timeout)
        return self.process.wait(timeout=timeout)

    @property
    def tail(self) -> str:
        return "\n".join(screen(self.output)[-40:])


def screen(text: str) -> list[str]:
    """The lines a terminal shows after ``text``: what rich's live display sends (CR, LF,
    cursor up, erase line; colours and cursor visibility ignored)."""
    text = _OSC.sub("", text)
    lines, row, column = [""], 0, 0
    position = 0
    for match in [*_CSI.finditer(text), None]:
        end = match.start() if match else len(text)
        for char in text[position:end]:
            if char == "\r":
                column = 0
            elif char == "\n":
                row, column = row + 1, 0
                lines += [""] * (row + 1 - len(lines))
            elif char >= " " or char == "\t":
                line = lines[row].ljust(column)
                lines[row] = line[:column] + char + line[column + 1 :]
                column += 1
        if match is None:
            break
        position = match.end()
        argument, command = match.groups()
        if command == "A":
            row = max(0, row - int(argument or 1))
        elif command == "K":
            lines[row] = "" if argument == "2" else lines[row][:column]
        elif command == "G":
            column = int(argument or 1) - 1
    return [line.rstrip() for line in lines]


# -- the setting ---------------------------------------------------------------------------


@pytest.fixture
def setting(tmp_path: Path) -> Iterator[tuple[FakePacs, XnatEmulator, list[str], dict[str, str]]]:
    """The fake PACS (2 studies), the XNAT emulator, the command line and its environment."""
    port = free_port()
    pacs = FakePacs.from_specs(DEMO_STUDIES[:2]).start()
    pacs.add_move_destination("PACSMAN", "127.0.0.1", port)
    xnat = XnatEmulator(tmp_path / "xnat", projects=(PROJECT,)).start()
    extra = f"""\
    xnat: {{url: "{xnat.url}", project: {PROJECT}}}
    push: {{backoff_max: 0.5}}
    """
    config = write_config(
        tmp_path, port=pacs.port, called_ae_title=pacs.ae_title, local_port=port, extra=extra
    )
    queryfile = write_queryfile(tmp_path, QUERY)
    argv = [sys.executable, "-m", "pacsman", "--queryfile", str(queryfile), "--save"]
    argv += ["--config", str(config)]
    for name in ("xdg", "home", "tmp"):
        (tmp_path / name).mkdir()
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(tmp_path / "xdg"),
        "HOME": str(tmp_path / "home"),
        "TMPDIR": str(tmp_path / "tmp"),
        "XNAT_USER": "admin",
        "XNAT_PASS": "secret",
        "TERM": "xterm-256color",
    }
    env.pop("COLUMNS", None)
    env.pop("NO_COLOR", None)
    try:
        yield pacs, xnat, argv, env
    finally:
        while _STARTED:
            _STARTED.pop().kill()
        pacs.stop()
        xnat.stop()


def _info(tmp_path: Path) -> list[dict[str, str]]:
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8", newline="") as fh:
        return list(csv.DictReader(fh))


def _moves(pacs: FakePacs) -> list[str]:
    return [call for call in pacs.calls if call.startswith("C-MOVE SERIES")]


def _assert_all_gone(terminal: Terminal) -> None:
    """No process of the command's session is left (the de-identify/push one included)."""
    session = terminal.process.pid

    def gone() -> bool:
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rpartition(")")[2].split()
            except OSError:
                continue
            if len(fields) > 4 and fields[0] != "Z" and int(fields[4]) == session:
                return False
        return True

    wait_for(gone, timeout=20, what=f"every process of session {session} to end")


def _assert_interrupted(terminal: Terminal, status: int) -> None:
    assert status == EXIT_INTERRUPTED, terminal.tail
    assert INTERRUPTED in terminal.output
    assert "Traceback" not in terminal.output, terminal.output[terminal.output.find("Traceback") :]
    assert "KeyboardInterrupt" not in terminal.output
    _assert_all_gone(terminal)


# -- the tests -----------------------------------------------------------------------------


def test_live_display_is_redrawn_in_place_and_ends_above_the_summary(
    tmp_path: Path, setting: tuple[FakePacs, XnatEmulator, list[str], dict[str, str]]
) -> None:
    """A whole --save --push run: the display shows every stage and ends done, once on the
    screen; every log line is above it, whole; the summary is below it; exit 0."""
    _, xnat, argv, env = setting
    terminal = Terminal([*argv, "--push"], env)
    status = terminal.finish()
    shown = screen(terminal.output)
    assert status == 0, terminal.tail
    rows = {
        name: [i for i, line in enumerate(shown) if line.startswith(name + " ")]
        for name in ("query", "retrieve", "de-identify", "push")
    }
    assert all(len(found) == 1 for found in rows.values()), rows  # redrawn in place
    assert f"{SERIES}/{SERIES} series" in shown[rows["retrieve"][0]]
    assert f" {INSTANCES}/{INSTANCES} " in shown[rows["de-identify"][0]]
    assert "2/2 sessions" in shown[rows["push"][0]]
    assert all(shown[r[0]].endswith("done") for r in rows.values())
    title = rows["query"][0] - 2  # then the column headers
    assert re.fullmatch(r"run 1 · \d:\d\d:\d\d", shown[title])
    assert shown[title + 1].split() == ["done", "instances", "MB", "MB/s", "failed"]
    logs = [i for i, line in enumerate(shown) if re.match(r"\d{4}-\d\d-\d\dT", line)]
    assert logs
    assert max(logs) < title  # log lines went above the display, not through it
    assert all("[" in shown[i] and "]" in shown[i] for i in logs)  # whole lines
    summary = next(i for i, line in enumerate(shown) if line.startswith("run 1 (new) finished"))
    assert summary > rows["push"][0]
    assert "nothing: every row is done" in "\n".join(shown[summary:])
    assert terminal.output.count("retrieve ") > 1  # it was drawn more than once
    assert "Traceback" not in terminal.output
    assert {s.label: s.file_count for s in xnat.sessions()} == SESSIONS


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_interrupt_during_save_exits_130_and_the_rerun_resumes(
    tmp_path: Path,
    setting: tuple[FakePacs, XnatEmulator, list[str], dict[str, str]],
    stop: str,
) -> None:
    """^C (or ``kill``: SIGTERM to pacsman alone) while series are being moved (a PACS
    slowed to 0.1 s per instance): exit 130 with the resume line, no traceback, nothing left
    running; the same command then moves only the series not done, and every series ends
    COMPLETE with every instance."""
    pacs, _, argv, env = setting
    pacs.faults = Faults(pending_delay=0.1)
    terminal = Terminal(argv, env)
    terminal.wait_for(lambda: len(_moves(pacs)) >= 2, what="the second series being moved")
    terminal.wait_for(lambda: "retrieve " in terminal.output, what="the progress display")
    if stop == "sigterm":
        terminal.process.terminate()
    else:
        terminal.control_c()
    _assert_interrupted(terminal, terminal.finish(timeout=30))
    retrieve = next(x for x in screen(terminal.output) if x.startswith("retrieve "))
    assert retrieve.endswith("interrupted")  # the display's last drawing says so
    pacs.faults = Faults()
    pacs.clear_calls()
    again = Terminal(argv, env)
    status = again.finish()
    rows = _info(tmp_path)
    assert status == 0, again.tail
    assert "(resumed)" in again.output
    assert 1 <= len(_moves(pacs)) < SERIES  # the series done before ^C are not moved again
    assert {"COMPLETE"} == {r["state"] for r in rows}
    assert sum(int(r["received_instances"]) for r in rows) == INSTANCES
    assert len(list((tmp_path / "data").rglob("*.dcm"))) == INSTANCES


def test_control_c_during_push_exits_130_and_the_rerun_pushes_each_session_once(
    tmp_path: Path, setting: tuple[FakePacs, XnatEmulator, list[str], dict[str, str]]
) -> None:
    """^C while XNAT imports a session (slowed to 1.5 s): exit 130 with the resume line, no
    traceback from pacsman nor from its de-identify/push process, which is gone too; the
    same command then pushes what is left, and XNAT holds each session once, whole."""
    _, xnat, argv, env = setting
    xnat.faults.route_latency = {"/data/services/import": 1.5}

    def importing() -> bool:
        return any(r.path == "/data/services/import" for r in xnat.request_log)

    terminal = Terminal([*argv, "--push"], env)
    terminal.wait_for(importing, what="an XNAT import under way")
    terminal.control_c()
    _assert_interrupted(terminal, terminal.finish(timeout=30))
    xnat.faults.route_latency = {}
    again = Terminal([*argv, "--push"], env)
    status = again.finish()
    imports = Counter(
        r.query.partition("session=")[2].partition("&")[0]
        for r in xnat.request_log
        if r.path == "/data/services/import"
    )
    assert status == 0, again.tail
    assert "(resumed)" in again.output
    assert {s.label: s.file_count for s in xnat.sessions()} == SESSIONS
    assert all(n <= 2 for n in imports.values())  # the one cut short, at most, twice
    assert {"DONE"} == {r["push"] for r in _info(tmp_path)}
