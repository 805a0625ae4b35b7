"""Inputs that pass a first look and then hang, crash or mislead (issue 10, items 5, 10, 13-15).

Each probe is replayed the way a user meets it: through ``pacsman validate`` or a run, or
through the function that builds the path on disk.  In every case the answer is one clear,
located message (exit 2 for bad input), never a traceback, a hang or a silent misreading.
"""

# The tables below pin whole user-facing messages, one case per line, so that a reviewer reads
# each message as the user sees it; wrapping them would hide exactly what is being checked.
# ruff: noqa: E501

from __future__ import annotations

import csv
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from pacsman.cli import main
from pacsman.config import load_config, parse_config
from pacsman.config._yaml import MAX_BYTES, load_yaml, read_config_text
from pacsman.errors import ConfigError, QueryFileError, Severity
from pacsman.layout import (
    anonymized_series_directory,
    default_labels,
    instance_filename,
    safe_component,
    series_directory,
)
from pacsman.models import QueryFile, QueryRow
from pacsman.queryfile import load_queryfile
from pacsman.testing.fakepacs import FakePacs
from tests.helpers import write_config, write_queryfile

FakePacsFactory = Callable[..., FakePacs]
NODE = "pacs:\n  main:\n    host: 127.0.0.1\n    port: 4242\n    called_ae_title: ORTHANC\n"


def _validate(
    capsys: pytest.CaptureFixture[str], queryfile: Path, config: Path | None = None
) -> tuple[int, str]:
    """Run ``pacsman validate`` and return its exit code and stderr."""
    argv = ["validate", str(queryfile)] + ([] if config is None else ["--config", str(config)])
    status = main(argv)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return status, err


def _config_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str) -> str:
    """Validate a good query file with the config ``text``: exit 2, one short located line."""
    config = tmp_path / "pacsman.yaml"
    config.write_text(text, encoding="utf-8")
    queryfile = write_queryfile(tmp_path, "PatientID\nP1\n")
    status, err = _validate(capsys, queryfile, config)
    assert status == 2, err
    assert err.startswith("pacsman: 1 problem(s) in the config:\n"), err
    assert len(err) < 1000, err
    return err.splitlines()[1]


# --- item 5: the validator accepts only what the run can send -----------------------------------

FULL_WIDTH = [
    ("StudyDate", "２０２４０２１２", "'２０２４０２１２' holds '２' (U+FF12), which is not ASCII; DICOM dates (StudyDate, VR DA) use ASCII characters only: write '20240212'"),
    ("SeriesNumber", "３", "'３' holds '３' (U+FF13), which is not ASCII; DICOM numbers (SeriesNumber, VR IS) use ASCII characters only: write '3'"),
    ("StudyTime", "０８００", "DICOM times (StudyTime, VR TM) use ASCII characters only: write '0800'"),
    ("StudyInstanceUID", "１.２.３", "DICOM UIDs (StudyInstanceUID, VR UI) use ASCII characters only: write '1.2.3'"),
    ("Modality", "ＭＲ", "DICOM codes (Modality, VR CS) use ASCII characters only: write 'MR'"),
    ("PatientBirthDate", "１９８０0101", "the value holds characters that are not ASCII (full-width digits?); DICOM dates (PatientBirthDate, VR DA) use ASCII characters only"),
]  # fmt: skip


@pytest.mark.parametrize(("column", "value", "message"), FULL_WIDTH)
def test_full_width_digits_are_refused_by_validate(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], column: str, value: str, message: str
) -> None:
    """`\\d` matches Unicode digits; the validator now takes ASCII only, and says what to type."""
    queryfile = write_queryfile(tmp_path, f"AccessionNumber,{column}\nA1,{value}\n")
    status, err = _validate(capsys, queryfile)
    assert status == 2
    lines = [x for x in err.splitlines() if x.startswith(f"{queryfile}:2:2: column '{column}': ")]
    assert len(lines) == 1, err
    assert lines[0].endswith(message)
    if column == "PatientBirthDate":
        assert "1980" not in err  # patient data is never quoted
        assert "１９８０" not in err


def test_values_are_checked_against_the_character_set_of_each_rows_node(tmp_path: Path) -> None:
    """A value the row's own node cannot encode is refused; the same value is fine elsewhere."""
    queryfile = write_queryfile(
        tmp_path,
        """\
        PatientName,StudyDescription,Pacs
        王^小明,Kopf,latin
        DOE,脑,latin
        王^小明,脑,utf8
        DOE,脑,
        Müller,Knie,ascii
        """,
    )
    sets = {"latin": "ISO_IR 100", "utf8": "ISO_IR 192", "ascii": "ISO_IR 6"}
    with pytest.raises(QueryFileError) as caught:
        load_queryfile(queryfile, character_sets=sets, default_pacs="latin")
    fix = "replace it with '?' (any one character), or set the node's character_set to 'ISO_IR 192' (UTF-8) if the PACS accepts it"
    latin = "PACS node 'latin', whose character set is 'ISO_IR 100' (pacs.latin.character_set)"
    ascii_node = "PACS node 'ascii', whose character set is 'ISO_IR 6' (pacs.ascii.character_set)"
    assert [str(p).removeprefix(f"{tmp_path}/") for p in caught.value.problems] == [
        f"q.csv:2:1: column 'PatientName': character 1 cannot be sent to {latin}; {fix}",
        f"q.csv:3:2: column 'StudyDescription': '脑' (U+8111) cannot be sent to {latin}; {fix}",
        f"q.csv:5:2: column 'StudyDescription': '脑' (U+8111) cannot be sent to {latin}; {fix}",
        f"q.csv:6:1: column 'PatientName': character 2 cannot be sent to {ascii_node}; {fix}",
    ]


def _run_info(
    tmp_path: Path,
    pacs: FakePacs,
    rows: tuple[QueryRow, ...],
    monkeypatch: pytest.MonkeyPatch,
) -> tuple[int, dict[str, dict[str, str]]]:
    """Run ``--info`` on ``rows`` as if they had passed validation (they "slipped through")."""
    config = write_config(
        tmp_path,
        port=pacs.port,
        called_ae_title=pacs.ae_title,
        node="fake",
        extra_node="character_set: ISO_IR 100",
    )
    path = write_queryfile(tmp_path, "StudyDate,PatientName,PatientID\n")
    slipped = QueryFile(path, "0" * 64, rows)
    monkeypatch.setattr("pacsman.pipeline.load_queryfile", lambda *_, **__: slipped)
    status = main(["--queryfile", str(path), "--info", "--config", str(config)])
    with (tmp_path / "data" / "q_info.csv").open(encoding="utf-8") as fh:
        by_row: dict[str, dict[str, str]] = {}
        for line in csv.DictReader(fh):
            by_row.setdefault(line["row"], line)
    return status, by_row


def test_a_row_that_cannot_be_sent_fails_alone_on_every_rerun(
    fake_pacs: FakePacsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A value the node cannot encode fails only its row, located; the next row runs, twice."""
    pacs = fake_pacs()
    rows = (
        QueryRow(line=2, keys={"StudyDate": "２０２４０２１２"}),
        QueryRow(line=3, keys={"PatientName": "王*"}),
        QueryRow(line=4, keys={"PatientID": "DEMO001"}),
    )
    for _ in range(2):  # the rerun retries rows 2 and 3: they fail alone again, no crash
        status, info = _run_info(tmp_path, pacs, rows, monkeypatch)
        assert status == 1
        assert info["2"]["state"] == "FAILED"
        assert info["2"]["detail"].startswith(f"{tmp_path}/q.csv:2:1: column 'StudyDate': ")
        assert info["3"]["state"] == "FAILED"
        assert info["3"]["detail"].startswith(f"{tmp_path}/q.csv:3:2: column 'PatientName': ")
        assert "王" not in info["3"]["detail"]
        assert info["4"]["state"] != "FAILED"
        assert info["4"]["SeriesInstanceUID"]


def test_an_identifier_the_encoder_refuses_fails_only_its_row(
    fake_pacs: FakePacsFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past every check, an identifier that cannot be encoded still fails only its row."""
    monkeypatch.setattr("pacsman.pipeline.query.sendable_problem", lambda *_, **__: None)
    pacs = fake_pacs()
    rows = (
        QueryRow(line=2, keys={"StudyDate": "２０２４０２１２"}),
        QueryRow(line=3, keys={"PatientID": "DEMO001"}),
    )
    status, info = _run_info(tmp_path, pacs, rows, monkeypatch)
    assert status == 1
    assert info["2"]["state"] == "FAILED"
    assert info["2"]["detail"] == (
        f"{tmp_path}/q.csv:2:1: the C-FIND identifier of this row could not be encoded for "
        "PACS node 'fake' (character set 'ISO_IR 100'); correct the value, or "
        "pacs.fake.character_set"
    )
    assert info["3"]["state"] != "FAILED"


# --- item 10: the config loader ------------------------------------------------------------------

ALIAS_BOMB = "".join(
    f"{name}: &{name} [{','.join([prev] * 9)}]\n"
    for name, prev in zip("abcdefghi", ['"lol"', *(f"*{c}" for c in "abcdefgh")], strict=True)
)


def test_the_alias_bomb_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The 9x9 "billion laughs" (342 bytes) ran for over 60 s; now it is refused, located."""
    assert len(ALIAS_BOMB) < 500
    started = time.monotonic()
    line = _config_problem(tmp_path, capsys, NODE + ALIAS_BOMB)
    assert time.monotonic() - started < 2.0
    assert re.fullmatch(
        r".*pacsman\.yaml:\d+:\d+: invalid YAML: more than 5000 values once aliases are "
        r"expanded; a config holds a few hundred: remove the aliases that repeat whole lists",
        line,
    ), line


CONFIG_PROBES = [
    (
        "a: " + "[" * 5000,
        ":1:36: invalid YAML: lists and mappings nested more than 32 deep (aliases expanded); a config needs about 5 levels: look for an unclosed '[' or '{'",
    ),
    (
        NODE.replace("4242", "9" * 5000),
        ":4:11: invalid YAML: a number of 5000 digits; no setting takes more than 18",
    ),
    (
        NODE.replace("4242", "0777"),
        ":4:11: invalid YAML: 0777 has a leading zero, which YAML 1.1 reads as octal (511); write 777 for the decimal number, or quote it ('0777') if it is text",
    ),
    (
        NODE + "    move_interval: 1:30\n",
        ":6:20: invalid YAML: 1:30 is a YAML 1.1 base-60 number (read as 90); quote it ('1:30') if it is a time or text, or write 90",
    ),
    (
        NODE + "    max_attempts: 1_000\n",
        ":6:19: invalid YAML: 1_000 has '_' in it, which YAML 1.1 drops (read as 1000); write 1000 in plain decimal, or quote it ('1_000') if it is text",
    ),
    (
        NODE + "    max_attempts: 0x10\n",
        ":6:19: invalid YAML: 0x10 is a YAML 1.1 number (read as 16); write 16 in plain decimal, or quote it ('0x10') if it is text",
    ),
    (
        NODE + "    move_interval: !!float abc\n",
        ":6:20: invalid YAML: this value is no valid float; remove its tag, or quote it if it is text",
    ),
    (
        "a: &a [*a]\n",
        ":1:4: invalid YAML: an alias refers to a list or mapping that contains it",
    ),
    (
        NODE + "anonymization: {subject_template: '{n:99999999}'}\n",
        ":6: anonymization.subject_template: '{n:99999999}' is not a valid template ({n:99999999} is wider than the 64 characters of an XNAT label); use fields {project} and {n}, e.g. '{project}_{n:04d}'",
    ),
    (
        NODE + "xnat: {url: 'https://xnat.example.org/data?token=hunter2'}\n",
        ":6: xnat.url: 'https://xnat.example.org/data?...' has a query string or fragment (not repeated here: it may hold a token); use http(s)://host[:port][/path] only; secrets never live in the config file; set XNAT_USER and XNAT_PASS in the environment or use ~/.netrc",
    ),
    (
        NODE + "xnat: {url: 'https://me:hunter2@[::1/x'}\n",
        ":6: xnat.url: the URL contains credentials; secrets never live in the config file; set XNAT_USER and XNAT_PASS in the environment or use ~/.netrc",
    ),
    (
        NODE + "xnat: {url: 'https://[::1/x'}\n",
        ":6: xnat.url: 'https://[::1/x' is not an http(s) URL; use http(s)://host[:port][/path]",
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    CONFIG_PROBES,
    ids=[
        "5000-brackets",
        "5000-digit-port",
        "octal-port",
        "base-60",
        "underscore",
        "hex",
        "bad-tag",
        "recursive-alias",
        "huge-template",
        "token-in-url",
        "password-in-broken-url",
        "broken-url",
    ],
)
def test_config_probe_ends_as_one_located_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    """Each probe: exit 2 and one short message with line (and column), no traceback."""
    line = _config_problem(tmp_path, capsys, text)
    assert line == f"{tmp_path}/pacsman.yaml{message}"
    assert "hunter2" not in line


BIG_CONFIGS = {
    "200k-brackets": "a: " + "[" * 200_000,
    "100k-dashes": "- " * 100_000,
    "10k-keys": "".join(f"k{i}: {i}\n" for i in range(10_000)),
    "20k-list": "a: [" + "1," * 20_000 + "]",
    "10k-anchors": "a: [" + ",".join(f"&x{i} 1" for i in range(10_000)) + "]",
}


@pytest.mark.parametrize("text", BIG_CONFIGS.values(), ids=BIG_CONFIGS.keys())
def test_large_configs_under_the_size_cap_are_refused_quickly(text: str) -> None:
    """Within 256 KiB, deep or long YAML stops at the first limit, not after parsing it all."""
    assert len(text.encode()) <= MAX_BYTES
    started = time.monotonic()
    with pytest.raises(yaml.YAMLError, match=r"nested more than 32 deep|more than 5000 values"):
        load_yaml(text)
    assert time.monotonic() - started < 3.0


def test_yaml_11_forms_that_stay_accepted() -> None:
    """Plain decimals, quoted look-alikes and floats load as written."""
    text = "a: 0\nb: -3\nc: 1.5\nd: '0777'\ne: \"1:30\"\nf: .inf\ng: 007x\n"
    assert load_yaml(text) == {
        "a": 0, "b": -3, "c": 1.5, "d": "0777", "e": "1:30", "f": float("inf"), "g": "007x"
    }  # fmt: skip


def test_an_oversized_config_is_refused_without_reading_it_all(tmp_path: Path) -> None:
    """A config above 256 KiB is refused with the limit, not parsed."""
    path = tmp_path / "big.yaml"
    path.write_bytes(b"# " + b"x" * MAX_BYTES + b"\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: is larger than 256 KiB")):
        load_config(path)


@pytest.mark.parametrize(("encoding", "name"), [("utf-16", "UTF-16"), ("utf-32", "UTF-32")])
def test_a_wide_config_file_is_named(tmp_path: Path, encoding: str, name: str) -> None:
    """A config saved as UTF-16 or UTF-32 (with BOM) is named as such."""
    path = tmp_path / "wide.yaml"
    path.write_bytes(NODE.encode(encoding))
    with pytest.raises(ConfigError, match=re.escape(f"the file is {name}, not UTF-8")):
        load_config(path)


# --- item 13: FIFOs, wide text, wildcard-only forms, Modality terms ------------------------------


def _fifo(tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    os.mkfifo(path)
    return path


def _without_hanging(call: Callable[[], object], fifo: Path) -> object:
    """Run ``call`` in a thread; if it blocks on ``fifo``, unblock it and fail the test."""
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(_catch(call)), daemon=True)
    worker.start()
    worker.join(timeout=10)
    if worker.is_alive():
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # EOF for the blocked reader
        worker.join(timeout=10)
        pytest.fail(f"reading {fifo} blocked")
    return outcome[0]


def _catch(call: Callable[[], object]) -> object:
    try:
        return call()
    except Exception as exc:  # the test inspects it
        return exc


@pytest.mark.timeout(60)
def test_a_fifo_as_query_file_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A named pipe given as the query file is refused, not read (it used to hang)."""
    fifo = _fifo(tmp_path, "q.csv")
    status = _without_hanging(lambda: main(["validate", str(fifo)]), fifo)
    err = capsys.readouterr().err
    assert status == 2
    assert (
        f"{fifo}: the query file is a named pipe (FIFO), not a regular file; save the query "
        "as a CSV file and give its path"
    ) in err


@pytest.mark.timeout(60)
def test_a_fifo_as_config_is_refused_at_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named pipe given as the config (option, PACSMAN_CONFIG, or read directly) is refused."""
    fifo = _fifo(tmp_path, "pacsman.yaml")
    queryfile = write_queryfile(tmp_path, "PatientID\nP1\n")
    status = _without_hanging(
        lambda: main(["validate", str(queryfile), "--config", str(fifo)]), fifo
    )
    assert status == 2
    assert f"{fifo}: the config file given is a named pipe (FIFO), not a regular file" in (
        capsys.readouterr().err
    )
    monkeypatch.setenv("PACSMAN_CONFIG", str(fifo))
    error = _without_hanging(load_config, fifo)
    assert isinstance(error, ConfigError)
    assert f"{fifo}: PACSMAN_CONFIG is a named pipe (FIFO), not a regular file" in str(error)
    error = _without_hanging(lambda: read_config_text(fifo), fifo)
    assert isinstance(error, ConfigError)
    assert f"{fifo}: is a named pipe (FIFO), not a regular file" in str(error)


WIDE_FILES = [
    ("utf-32", "UTF-32", "UTF-32"),
    ("utf-32-le", "UTF-32", "UTF-32LE"),
    ("utf-32-be", "UTF-32", "UTF-32BE"),
    ("utf-16-le", 'UTF-16 (Excel "Unicode Text")', "UTF-16LE"),
]


@pytest.mark.parametrize(("encoding", "name", "iconv"), WIDE_FILES)
def test_utf32_is_not_called_utf16(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], encoding: str, name: str, iconv: str
) -> None:
    """UTF-32 (with or without BOM) is named UTF-32, with an iconv line that works."""
    path = tmp_path / "list.csv"
    path.write_bytes("PatientID,StudyDate\nDEMO001,20240101\n".encode(encoding))
    status, err = _validate(capsys, path)
    assert status == 2
    assert (
        f'{path}: the file is {name}, not UTF-8; save it as "CSV UTF-8" in Excel, or: '
        f"iconv -f {iconv} -t UTF-8 list.csv > list-utf8.csv"
    ) in err


def test_a_utf8_file_full_of_nul_bytes_is_not_called_utf16(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NUL padding (a damaged or preallocated file) is named as such, located at the first."""
    path = tmp_path / "q.csv"
    path.write_bytes(b"PatientID,StudyDate\nDEMO001,20240101\n" + b"\x00" * 4096)
    status, err = _validate(capsys, path)
    assert status == 2
    assert "UTF-16" not in err
    assert (
        f"{path}:3:1: the file holds 4096 NUL bytes (the first here): it is not CSV text, or it "
        "was damaged (e.g. padded with zeros); open q.csv in a text editor, delete them, and "
        'save it as "CSV UTF-8"'
    ) in err


WILDCARD_ONLY = [
    ("PatientName", "*^*", "'*^*' is only wildcards and separators; leave the cell empty or narrow it"),
    ("PatientName", "*^*^*=*", "'*^*^*=*' is only wildcards and separators; leave the cell empty or narrow it"),
    ("PatientName", "^", "'^' holds only name separators; give a name or leave the cell empty"),
    ("PatientName", "**", "'**' is only wildcards; leave the cell empty or narrow it"),
    ("StudyDescription", "?*", "'?*' is only wildcards; leave the cell empty or narrow it"),
    ("ImageType", "*\\*", "'*\\*' is only wildcards and separators; leave the cell empty or narrow it"),
    ("SeriesDescription", "* *", "'* *' is only wildcards and separators; leave the cell empty or narrow it"),
]  # fmt: skip


@pytest.mark.parametrize(("column", "value", "message"), WILDCARD_ONLY)
def test_wildcard_only_forms_are_refused(
    tmp_path: Path, column: str, value: str, message: str
) -> None:
    """`*^*` and its cousins match everything, like a bare `*`, and are refused the same way."""
    queryfile = write_queryfile(tmp_path, f'StudyDate,{column}\n20240101,"{value}"\n')
    with pytest.raises(QueryFileError) as caught:
        load_queryfile(queryfile)
    assert [p.message for p in caught.value.problems] == [f"column '{column}': {message}"]


def test_a_literal_caret_in_text_is_not_a_separator(tmp_path: Path) -> None:
    """Outside names, '^' is a character: `*^*` in a description is a real filter."""
    queryfile = write_queryfile(tmp_path, "StudyDescription\n*^*\n")
    assert load_queryfile(queryfile).rows[0].keys == {"StudyDescription": "*^*"}


@pytest.mark.parametrize(
    ("value", "hint"), [("XYZ", "check the spelling"), ("MRI", "did you mean 'MR'?")]
)
def test_a_modality_outside_the_defined_terms_is_a_warning(
    tmp_path: Path, value: str, hint: str
) -> None:
    """`Modality XYZ` loads, with a located warning naming PS3.3 and the likely fix."""
    queryfile = write_queryfile(tmp_path, f"PatientID,Modality\nP1,{value}\nP2,MR\nP3,M*\nP4,DS\n")
    loaded = load_queryfile(queryfile)
    assert len(loaded.rows) == 4
    assert [(p.line, p.column, p.severity, p.message) for p in loaded.warnings] == [
        (
            2,
            2,
            Severity.WARNING,
            f"column 'Modality': '{value}' is not a Modality defined term (DICOM PS3.3 "
            f"C.7.3.1.1.1, e.g. CT, MR, PT, US, DX, MG, SR); {hint} (a PACS matches it as "
            "written: it may find nothing)",
        )
    ]


# --- item 14: settings that work but expose the SCP or the XNAT password -------------------------


def test_bind_host_on_every_interface_warns_with_the_fix() -> None:
    """`bind_host: 0.0.0.0` (or `::`) loads, with a warning that names the key and the fix."""
    for host in ("0.0.0.0", "::"):
        config = parse_config(load_yaml(f"local:\n  bind_host: '{host}'\n{NODE}"), source="c.yaml")
        assert [str(w) for w in config.warnings] == [
            f"c.yaml:2: warning: local.bind_host: '{host}' makes the Storage SCP listen on "
            "every network interface, so any host that reaches local.port can send to it; set "
            "local.bind_host to the address of the interface the PACS sends to (or 127.0.0.1 "
            "when the PACS runs on this machine)"
        ]


@pytest.mark.parametrize(
    ("url", "warned"),
    [
        ("http://xnat.example.org", True),
        ("HTTP://10.0.0.5:8080/xnat", True),
        ("https://xnat.example.org", False),
        ("http://127.0.0.1:8080", False),
        ("http://localhost/xnat", False),
        ("http://[::1]:8080", False),
    ],
)
def test_plain_http_xnat_url_warns_unless_loopback(url: str, warned: bool) -> None:
    """An http:// XNAT on another machine warns (credentials in clear); loopback does not."""
    config = parse_config(load_yaml(f"{NODE}xnat:\n  url: '{url}'\n"), source="c.yaml")
    expected = [
        f"c.yaml:7: warning: xnat.url: '{url}' is plain http: the XNAT credentials and every "
        "pushed image cross the network unencrypted; use https:// (plain http only to "
        "127.0.0.1 or localhost)"
    ]
    assert [str(w) for w in config.warnings] == (expected if warned else [])


def test_warnings_ride_along_with_errors(tmp_path: Path) -> None:
    """When the config fails, its warnings are listed after the errors, not lost."""
    text = f"local: {{bind_host: '0.0.0.0', port: 0}}\n{NODE}"
    with pytest.raises(ConfigError) as caught:
        parse_config(load_yaml(text), source="c.yaml")
    assert [(p.severity, p.message[:16]) for p in caught.value.problems] == [
        (Severity.ERROR, "local.port: 0 is"),
        (Severity.WARNING, "local.bind_host:"),
    ]
    assert str(caught.value).startswith("1 problem(s) in the config:")


# --- item 15: names Windows reserves ------------------------------------------------------------

RESERVED = [
    ("CON", "CON_"),
    ("con", "con_"),
    ("Nul", "Nul_"),
    ("AUX.dcm", "AUX_.dcm"),
    ("prn.tar.gz", "prn_.tar.gz"),
    ("COM1", "COM1_"),
    ("lpt9.txt", "lpt9_.txt"),
    ("COM\u00b9", "COM\u00b9_"),
    ("CON ", "CON_"),
    ("NUL.", "NUL_"),
    (" aux . ", "aux_"),
]


@pytest.mark.parametrize(("name", "safe"), RESERVED)
def test_windows_reserved_names_are_renamed(name: str, safe: str) -> None:
    """Device names (any case, with an extension, trailing dots/spaces) get a '_' after the stem."""
    assert safe == safe_component(name, fallback="x")


ORDINARY = [
    ("1.2.840.113619.2.55.3", "1.2.840.113619.2.55.3"),
    ("DEMO001", "DEMO001"),
    ("CONSOLE", "CONSOLE"),
    ("COM10", "COM10"),
    ("LPT", "LPT"),
    ("Müller^Jürgen", "Müller^Jürgen"),
    ("T1 sag / post", "T1_sag_post"),
    ("name. . ", "name"),
    ("...", "x"),
]


@pytest.mark.parametrize(("name", "safe"), ORDINARY)
def test_ordinary_names_are_unchanged(name: str, safe: str) -> None:
    """Everything that is not a device name comes out exactly as before."""
    assert safe == safe_component(name, fallback="x")


def test_every_folder_and_file_name_avoids_device_names(tmp_path: Path) -> None:
    """PatientID, SeriesDescription, SOPInstanceUID and XNAT labels: none names a device."""
    assert default_labels("AUX", "") == ("AUX_", "AUX_undated")
    assert (
        series_directory(
            tmp_path, subject="CON", session="nul", series_number="3", series_description="CON"
        )
        == tmp_path / "CON_" / "nul_" / "3-CON"
    )
    assert instance_filename("com1") == "com1_.dcm"
    assert (
        anonymized_series_directory(tmp_path, subject="PRN", session="lpt1", series_number="NUL")
        == tmp_path / "anonymized" / "PRN_" / "lpt1_" / "NUL_"
    )
