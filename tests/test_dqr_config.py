"""The ``dqr`` config section: defaults, every key read, every wrong value named with its rule."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from pacsman.config import Config, load_config, parse_config
from pacsman.config._yaml import load_yaml
from pacsman.config.dqr import DqrConfig, DqrStaleAfter
from pacsman.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "pacsman.example.yaml"
PACS = "pacs: {main: {host: 127.0.0.1, port: 4242, called_ae_title: ORTHANC}}\n"


def _config(dqr: str) -> Config:
    text = PACS + "dqr:\n" + textwrap.indent(textwrap.dedent(dqr).strip(), "  ") + "\n"
    return parse_config(load_yaml(text), source="t.yaml")


def _problems(dqr: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _config(dqr)
    return [f"{p.line}: {p.message}" for p in caught.value.problems]


def test_defaults_without_a_dqr_section() -> None:
    """No ``dqr:`` section gives the documented defaults (the hospital script's pace)."""
    config = parse_config(load_yaml(PACS), source="t.yaml")
    assert config.dqr == DqrConfig()
    assert (config.dqr.receiver_ae_title, config.dqr.receiver_port) == ("XNAT", 8104)
    assert (config.dqr.query, config.dqr.max_in_flight, config.dqr.interval) == ("xnat", 1, 60.0)
    assert (config.dqr.max_attempts, config.dqr.backoff_max) == (50, 600.0)
    assert config.dqr.poll_interval == 15.0
    assert config.dqr.stale_after == DqrStaleAfter(21600.0, 1800.0, 3600.0, 1800.0)
    assert config.dqr.replace_partial is False
    assert config.dqr.max_answer_mb == 32
    assert (config.dqr.pacs_id, config.dqr.pacs_ae_title) == (None, None)


def test_every_key_is_read() -> None:
    """Every key of the section lands in DqrConfig."""
    config = _config(
        """
        pacs_id: 2
        pacs_ae_title: ORTHANC
        receiver_ae_title: XNAT2
        receiver_port: 8105
        query: pacs
        max_in_flight: 3
        interval: 0
        max_attempts: 7
        backoff_max: 30
        poll_interval: 0.5
        stale_after: {queued: 100, processing: 20, issued: 30.5, received: 40}
        replace_partial: true
        max_answer_mb: 256
        """
    )
    assert config.dqr == DqrConfig(
        pacs_id=2,
        pacs_ae_title="ORTHANC",
        receiver_ae_title="XNAT2",
        receiver_port=8105,
        query="pacs",
        max_in_flight=3,
        interval=0.0,
        max_attempts=7,
        backoff_max=30.0,
        poll_interval=0.5,
        stale_after=DqrStaleAfter(queued=100.0, processing=20.0, issued=30.5, received=40.0),
        replace_partial=True,
        max_answer_mb=256,
    )
    assert config.warnings == ()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("query: dqr", "dqr.query: 'dqr' is not one of 'xnat', 'pacs'"),
        ("query: PACS", "dqr.query: 'PACS' is not one of 'xnat', 'pacs'; did you mean 'pacs'?"),
        ("max_in_flight: 0", "dqr.max_in_flight: 0 is out of range; use a whole number 1-20"),
        ("max_in_flight: 21", "dqr.max_in_flight: 21 is out of range; use a whole number 1-20"),
        ("interval: -1", "dqr.interval: -1 is not a valid duration; use 0 or more seconds"),
        ("interval: '60'", "dqr.interval: '60' is quoted text; write 60 without quotes"),
        ("max_attempts: 1001", "dqr.max_attempts: 1001 is out of range; use a whole number 1-1000"),
        ("backoff_max: 0", "dqr.backoff_max: 0 is not a valid duration; use more than 0 seconds"),
        ("poll_interval: 0", "dqr.poll_interval: 0 is not a valid duration; use more than 0"),
        ("receiver_port: 70000", "dqr.receiver_port: 70000 is not a TCP port; use 1-65535"),
        ("receiver_ae_title: ''", "dqr.receiver_ae_title: '' is empty; an AE title needs 1-16"),
        ("pacs_ae_title: " + "A" * 17, "dqr.pacs_ae_title: '" + "A" * 17 + "' is 17 characters"),
        ("pacs_id: 0", "dqr.pacs_id: 0 is out of range; use a whole number 1-2147483647"),
        ("pacs_id: one", "dqr.pacs_id: expected a whole number from 1 to 2147483647, got 'one'"),
        ("replace_partial: yes please", "dqr.replace_partial: expected true or false"),
        ("max_answer_mb: 0", "dqr.max_answer_mb: 0 is out of range; use a whole number 1-4096"),
        ("max_answer_mb: 5000", "dqr.max_answer_mb: 5000 is out of range; use a whole number"),
        ("stale_after: {issued: 0}", "dqr.stale_after.issued: 0 is not a valid duration"),
        ("stale_after: 60", "dqr.stale_after: expected a mapping of keys, got 60"),
        ("stale_after: {building: 60}", "dqr.stale_after.building: unknown key; known keys"),
        ("max_inflight: 2", "dqr.max_inflight: unknown key; did you mean 'max_in_flight'?"),
    ],
)
def test_a_wrong_value_is_named_with_its_rule(line: str, message: str) -> None:
    """One wrong value, one problem: key path, value, rule and fix, on the key's line."""
    problems = _problems(line)
    assert len(problems) == 1, problems
    assert problems[0].startswith("3: " + message), problems


def test_every_problem_at_once() -> None:
    """Several wrong keys are all reported in one ConfigError, in file order."""
    problems = _problems("query: x\nmax_attempts: 0\nreceiver_port: 0\n")
    assert [p.split(":")[0] for p in problems] == ["3", "4", "5"]


def test_stale_timer_shorter_than_two_polls_warns() -> None:
    """A timer shorter than two polls works but is flagged: a request would be given up
    after one look at most."""
    config = _config("poll_interval: 30\nstale_after: {processing: 45}\n")
    assert config.dqr.stale_after.processing == 45.0
    assert [w.message for w in config.warnings] == [
        "dqr.stale_after.processing: 45 s is less than two polls (poll_interval 30 s): a request "
        "would be given up after at most one look; raise it to 60 s or more, or lower "
        "dqr.poll_interval"
    ]


def test_a_secret_in_the_section_is_refused() -> None:
    """A password never lives in the dqr section either."""
    problems = _problems("password: hunter2\n")
    assert any(
        re.search(r"dqr\.password: secrets never live in the config file", p) for p in problems
    )


def test_example_spells_out_the_defaults() -> None:
    """config/pacsman.example.yaml's dqr section is exactly the defaults."""
    assert load_config(EXAMPLE).dqr == DqrConfig()
    text = EXAMPLE.read_text(encoding="utf-8")
    assert "\ndqr:\n" in text
    for key in DqrConfig.__dataclass_fields__:
        assert re.search(rf"^\s*#? ?{key}:", text, re.MULTILINE), key
