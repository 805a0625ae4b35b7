"""Config loading: YAML -> validated frozen dataclasses, every problem reported at once."""

from __future__ import annotations

import copy
import re
import textwrap
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

from pacsman.config import (
    DEFAULT_SEARCH,
    Config,
    LocalAE,
    LogConfig,
    PacsNode,
    find_config,
    load_config,
    parse_config,
)
from pacsman.config._yaml import load_yaml
from pacsman.errors import ConfigError, InputError

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "pacsman.example.yaml"
SECRETS = (
    "secrets never live in the config file; "
    "set XNAT_USER and XNAT_PASS in the environment or use ~/.netrc"
)
MINIMAL: dict[str, Any] = {
    "pacs": {"main": {"host": "127.0.0.1", "port": 4242, "called_ae_title": "ORTHANC"}}
}


@pytest.fixture(autouse=True)
def _no_env_config(monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep a PACSMAN_CONFIG from the developer's shell out of every test."""
    monkeypatch.delenv("PACSMAN_CONFIG", raising=False)


def _with(path: str, value: object) -> dict[str, Any]:
    """Return MINIMAL with the dotted key ``path`` set to ``value``."""
    data = copy.deepcopy(MINIMAL)
    *parents, last = path.split(".")
    here = data
    for key in parents:
        here = here.setdefault(key, {})
    here[last] = value
    return data


def _parse_text(text: str) -> Config:
    """Parse YAML text the way load_config does, with lines, from source 't.yaml'."""
    return parse_config(load_yaml(textwrap.dedent(text)), source="t.yaml")


def _parse(data: dict[str, Any]) -> Config:
    """Dump ``data`` as YAML and parse it back with lines."""
    return _parse_text(yaml.safe_dump(data, sort_keys=False))


def _problems(text: str) -> list[str]:
    """Return every problem reported for the YAML text, as 'line: message' strings."""
    with pytest.raises(ConfigError) as caught:
        _parse_text(text)
    return [f"{p.line}: {p.message}" for p in caught.value.problems]


# --- one wrong value, one pinned message -----------------------------------------------------

BAD_VALUES = [
    ("pacs.main.port", 70000, "pacs.main.port: 70000 is not a TCP port; use 1-65535"),
    ("pacs.main.port", 0, "pacs.main.port: 0 is not a TCP port; use 1-65535"),
    ("pacs.main.port", "4242", "pacs.main.port: '4242' is quoted text; write 4242 without quotes"),
    ("pacs.main.port", True, "pacs.main.port: expected a TCP port number (1-65535), got true"),
    ("local.port", 4242.5, "local.port: 4242.5 is not a TCP port; use 1-65535"),
    ("local.ae_title", "   ", "local.ae_title: '   ' is empty; an AE title needs 1-16 characters"),
    ("local.ae_title", "A" * 17, f"local.ae_title: '{'A' * 17}' is 17 characters; an AE title"),
    ("local.ae_title", "A\\B", "local.ae_title: 'A\\\\B' contains a backslash"),
    ("local.ae_title", "A\tB", "local.ae_title: 'A\\tB' contains '\\t' (U+0009)"),
    ("local.ae_title", "ÄRZTE", "AE titles use printable ASCII only"),
    ("local.ae_title", 1234, "local.ae_title: expected an AE title (text), got 1234; quote it"),
    ("pacs.main.called_ae_title", "", "pacs.main.called_ae_title: '' is empty"),
    (
        "local.allowed_calling_ae_titles",
        ["OK", "X" * 20],
        "local.allowed_calling_ae_titles[1]: '" + "X" * 20 + "' is 20 characters",
    ),
    (
        "local.allowed_calling_ae_titles",
        "STORESCU",
        "local.allowed_calling_ae_titles: expected a list, e.g. [A, B], got 'STORESCU'",
    ),
    ("local.bind_host", "not a host!", "local.bind_host: 'not a host!' is not an IP address"),
    ("pacs.main.host", "http://pacs", "(no scheme, port or path)"),
    ("pacs.main.host", "pacs:104", "pacs.main.host: 'pacs:104' is not an IP address or host name"),
    (
        "pacs.main.timeouts.connect",
        "ten",
        "pacs.main.timeouts.connect: expected a number of seconds, got 'ten'",
    ),
    ("pacs.main.timeouts.dimse", 0, "pacs.main.timeouts.dimse: 0 is not a valid duration; use"),
    ("pacs.main.timeouts.acse", -1, "use more than 0 seconds"),
    ("pacs.main.move_interval", -1, "pacs.main.move_interval: -1 is not a valid duration; use 0"),
    ("pacs.main.max_associations", 33, "use a whole number 1-32"),
    ("pacs.main.max_associations", 2.5, "pacs.main.max_associations: 2.5 is out of range"),
    ("pacs.main.max_attempts", 0, "pacs.main.max_attempts: 0 is out of range; use a whole number"),
    (
        "pacs.main.retrieve_method",
        "MOVE",
        "pacs.main.retrieve_method: 'MOVE' is not one of 'move', 'get'; did you mean 'move'?",
    ),
    ("pacs.main.query_model", "series", "'series' is not one of 'study', 'patient'"),
    ("pacs.main.count_instances", "sometimes", "is not one of 'auto', 'always', 'never'"),
    (
        "pacs.main.character_set",
        "UTF-8",
        "pacs.main.character_set: 'UTF-8' is not a DICOM character set pydicom knows",
    ),
    ("pacs.main.character_set", "ISO_IR 19", "did you mean 'ISO_IR 192'?"),
    ("pacs.main.character_set", "ISO_IR 192\\ISO 2022 IR 87", "'ISO_IR 192' cannot be combined"),
    ("pacs.main.character_set", "", "expected a DICOM character set, got ''"),
    (
        "pacs.main.retrieve_window",
        "25:00-07:00",
        "pacs.main.retrieve_window: '25:00-07:00' is not a time window; use HH:MM-HH:MM",
    ),
    ("pacs.main.retrieve_window", "19:00", "'19:00' is not a time window"),
    ("pacs.main.retrieve_window", 1140, "expected a time window, got 1140"),
    ("pacs.main.retrieve_window", "07:00-07:00", "starts and ends at the same time"),
    ("log.level", "INFO", "log.level: 'INFO' is not one of"),
    ("log.console", "pretty", "log.console: 'pretty' is not one of 'auto', 'human', 'json'"),
    ("log.file", 5, "log.file: expected a path, got 5"),
    ("store_root", "", "store_root: expected a path, got ''"),
    ("xnat.url", "ftp://xnat.example.org", "xnat.url: 'ftp://xnat.example.org' is not an http(s)"),
    ("xnat.url", "https://xnat.example.org?a=1", "use http(s)://host[:port][/path]"),
    ("xnat.url", "https://xnat.example.org:99999", "is not an http(s) URL"),
    ("xnat.project", "my project", "xnat.project: 'my project' is not an XNAT project ID"),
    ("xnat.verify_tls", "yes", "xnat.verify_tls: expected true or false, got 'yes'"),
    ("anonymization.enabled", 1, "anonymization.enabled: expected true or false, got 1"),
    ("default_pacs", "mian", "default_pacs: 'mian' is not a node under pacs; did you mean 'main'?"),
    ("default_pacs", "zzz", "default_pacs: 'zzz' is not a node under pacs; use one of: main"),
    ("local", ["a"], "local: expected a mapping of keys, got a list"),
    ("pacs.main.timeouts", 30, "pacs.main.timeouts: expected a mapping of keys, got 30"),
]


@pytest.mark.parametrize(("path", "value", "message"), BAD_VALUES)
def test_bad_value_is_reported_with_key_path_and_fix(
    path: str, value: object, message: str
) -> None:
    """Each wrong value gives exactly one problem naming the key path, value, rule and fix."""
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        _parse(_with(path, value))
    assert len(caught.value.problems) == 1
    assert caught.value.problems[0].line is not None


UNKNOWN_KEYS = [
    ("pacs.main.calledAE", "pacs.main.calledAE: unknown key; did you mean 'called_ae_title'?"),
    ("stor_root", "stor_root: unknown key; did you mean 'store_root'?"),
    ("log.levl", "log.levl: unknown key; did you mean 'level'?"),
    ("pacs.main.timeouts.dimce", "pacs.main.timeouts.dimce: unknown key; did you mean 'dimse'?"),
    ("pacs.main.timeouts.dimse_timeout", "known keys here: connect, acse, dimse, network"),
    ("local.colour", "local.colour: unknown key; known keys here: ae_title, bind_host, port"),
]


@pytest.mark.parametrize(("path", "message"), UNKNOWN_KEYS)
def test_unknown_key_suggests_the_nearest_known_key(path: str, message: str) -> None:
    """A misspelt key is an error that suggests what was probably meant."""
    with pytest.raises(ConfigError, match=re.escape(message)):
        _parse(_with(path, "x"))


SECRET_KEYS = [
    "xnat.password",
    "xnat.user",
    "xnat.api_key",
    "pacs.main.passwd",
    "log.token",
    "secret",
    "xnat.xnat_pass",
    "anonymization.other.deeper.username",
]


@pytest.mark.parametrize("path", SECRET_KEYS)
def test_secret_keys_are_refused_anywhere(path: str) -> None:
    """A credential key is refused at any depth, and its value never appears in the message."""
    with pytest.raises(ConfigError, match=re.escape(f"{path}: {SECRETS}")) as caught:
        _parse(_with(path, "hunter2"))
    assert "hunter2" not in str(caught.value)


def test_credentials_in_the_xnat_url_are_refused_without_echoing_them() -> None:
    """A URL with user:password is refused, and the password is not repeated."""
    with pytest.raises(
        ConfigError, match=re.escape(f"xnat.url: the URL contains credentials; {SECRETS}")
    ) as caught:
        _parse(_with("xnat.url", "https://me:hunter2@xnat.example.org"))
    assert "hunter2" not in str(caught.value)


def test_a_numeric_node_name_can_be_the_default() -> None:
    """A node written `2:` is named "2", and `default_pacs: 2` refers to it."""
    data = {"pacs": {"1": MINIMAL["pacs"]["main"], "2": MINIMAL["pacs"]["main"]}}
    text = yaml.safe_dump(data).replace("'", "") + "default_pacs: 2\n"
    assert _parse_text(text).node().name == "2"


def test_a_pacs_node_named_like_a_secret_is_just_a_name() -> None:
    """Node names are the user's choice; a node called 'token' is not a credential."""
    data = {"pacs": {"token": MINIMAL["pacs"]["main"]}}
    assert _parse(data).default_pacs == "token"


# --- accepted values ---------------------------------------------------------------------------

GOOD_VALUES = [
    ("local.ae_title", "  PACS  ", "PACS"),
    ("local.bind_host", "0.0.0.0", "0.0.0.0"),
    ("local.bind_host", "::1", "::1"),
    ("local.allowed_calling_ae_titles", ["A", "B "], ("A", "B")),
    ("pacs.main.host", "pacs.hospital.example.org", "pacs.hospital.example.org"),
    ("pacs.main.character_set", "\\ISO 2022 IR 87", "\\ISO 2022 IR 87"),
    ("pacs.main.character_set", "ISO_IR 100", "ISO_IR 100"),
    ("pacs.main.retrieve_window", "19:00-07:00", "19:00-07:00"),
    ("pacs.main.timeouts.dimse", 1200, 1200.0),
    ("pacs.main.move_interval", 0.5, 0.5),
    ("pacs.main.retrieve_method", "get", "get"),
    ("pacs.main.max_attempts", 1000, 1000),
    ("xnat.url", "https://xnat.example.org/xnat/", "https://xnat.example.org/xnat"),
    ("xnat.project", "MY_PROJ-1", "MY_PROJ-1"),
    ("store_root", "studies/in", Path("studies/in")),
    ("jobstore", "~/jobs.sqlite", Path.home() / "jobs.sqlite"),
    ("log.file", None, None),
    ("local.allowed_calling_ae_titles", None, ()),
    ("default_pacs", "main", "main"),
    ("anonymization.profile", "p.yaml", Path("p.yaml")),
]


@pytest.mark.parametrize(("path", "value", "expected"), GOOD_VALUES)
def test_good_value_is_accepted(path: str, value: object, expected: object) -> None:
    """Valid values load (normalised where the rule says so: spaces, ~, trailing '/')."""
    found: Any = _parse(_with(path, value))
    for part in path.split("."):
        found = found[part] if isinstance(found, Mapping) else getattr(found, part)
    assert expected == found


def test_empty_section_means_all_defaults() -> None:
    """`log:` with every key commented out (YAML null) gives the default LogConfig."""
    assert LogConfig() == _parse(_with("log", None)).log


def test_defaults_fill_everything_not_written() -> None:
    """A config naming one node gets every documented default."""
    config = _parse(MINIMAL)
    expected = Config(
        local=LocalAE(),
        pacs={
            "main": PacsNode(name="main", host="127.0.0.1", port=4242, called_ae_title="ORTHANC")
        },
        default_pacs="main",
        source=Path("t.yaml"),
    )
    assert expected == config


def test_nodes_keep_file_order_and_cannot_be_changed() -> None:
    """`pacs` keeps the order of the file, defaults to the first node, and is read-only."""
    node = MINIMAL["pacs"]["main"]
    config = _parse({"pacs": {"zeta": node, "alpha": node, "mid": node}})
    assert list(config.pacs) == ["zeta", "alpha", "mid"]
    assert config.default_pacs == "zeta"
    with pytest.raises(TypeError):
        config.pacs["new"] = config.node()  # type: ignore[index]


def test_node_lookup_by_name_default_and_unknown() -> None:
    """node() returns the default or the named node; an unknown name lists the known ones."""
    node = MINIMAL["pacs"]["main"]
    config = _parse({"pacs": {"main": node, "backup": node}, "default_pacs": "backup"})
    assert config.node().name == "backup"
    assert config.node("main").name == "main"
    message = (
        "pacs.mian: no such PACS node in the config; known nodes: main, backup"
        " (did you mean 'main'?)"
    )
    with pytest.raises(ConfigError, match=re.escape(message)) as caught:
        config.node("mian")
    assert isinstance(caught.value, InputError)


def test_config_rejects_a_default_that_is_not_a_node() -> None:
    """Building Config by hand with an unknown default_pacs is a programming error."""
    node = PacsNode(name="a", host="h", port=1, called_ae_title="A")
    with pytest.raises(ValueError, match="default_pacs 'b' is not one of the PACS nodes"):
        Config(local=LocalAE(), pacs={"a": node}, default_pacs="b")


def test_parse_config_accepts_plain_data_without_lines() -> None:
    """parse_config works on any parsed YAML; problems then carry no line."""
    assert parse_config(MINIMAL, source="mem").node().port == 4242
    with pytest.raises(ConfigError, match=re.escape("mem: pacs.main.port: 0 is not")) as caught:
        parse_config(_with("pacs.main.port", 0), source="mem")
    assert caught.value.problems[0].line is None


# --- the shape of the file ---------------------------------------------------------------------

EMPTY = "None: the file is empty; run 'pacsman init' (it writes config/pacsman.yaml) and edit it"
NO_NODES = (
    "pacs: at least one PACS node is required,"
    " e.g. pacs: {orthanc: {host: 127.0.0.1, port: 4242, called_ae_title: ORTHANC}}"
)
STRUCTURE = [
    (
        "",
        [EMPTY],
    ),
    ("# only a comment\n", [EMPTY]),
    ("- a\n- b\n", ["1: expected a mapping of keys (local:, pacs:, ...), got a list"]),
    ("local: {}\n", [f"None: {NO_NODES}"]),
    ("pacs: {}\n", [f"1: {NO_NODES}"]),
    (
        "pacs:\n  main:\n    port: 4242\n",
        [
            "2: pacs.main.host: required; e.g. host: 127.0.0.1",
            "2: pacs.main.called_ae_title: required; e.g. called_ae_title: ORTHANC",
        ],
    ),
    (
        "pacs:\n  main: 127.0.0.1:4242\n",
        ["2: pacs.main: expected a mapping of keys, got '127.0.0.1:4242'"],
    ),
    (
        "pacs:\n  my pacs: {host: h, port: 1, called_ae_title: A}\n",
        [
            "2: pacs.my pacs: 'my pacs' is not a valid node name;"
            " use 1-32 letters, digits, '_', '.' or '-'"
        ],
    ),
    (
        "pacs:\n  main: {host: h, port: 1, called_ae_title: A}\nlocal:\n  port:\n",
        ["4: local.port: has no value; give one, or delete the key for the default"],
    ),
    (
        "pacs:\n  main: {host: h, port: 1, called_ae_title: A, port: 2}\n",
        [
            "2: pacs.main.port: written twice (first on line 2);"
            " YAML keeps only the last, delete one"
        ],
    ),
    (
        "pacs:\n  main: {host: h, port: 1, called_ae_title: A}\njobstore: a\njobstore: b\n",
        ["4: jobstore: written twice (first on line 3); YAML keeps only the last, delete one"],
    ),
]


@pytest.mark.parametrize(("text", "expected"), STRUCTURE)
def test_structural_problems(text: str, expected: list[str]) -> None:
    """Empty files, wrong shapes, missing nodes and keys, and repeated keys are all reported."""
    assert expected == _problems(text)


MANY_MISTAKES = """\
    local:
      ae_title: "THIS TITLE IS TOO LONG"
      port: "11112"
    pacs:
      main:
        host: 127.0.0.1
        port: 70000
        calledAE: ORTHANC
        timeouts:
          connect: ten
        retrieve_method: fetch
      second:
        host: 10.0.0.2
        port: 104
        called_ae_title: PACS2
        retrieve_window: "19:00-31:00"
    default_pacs: third
    log:
      level: loud
    xnat:
      password: s3cret
    jobstore: a.sqlite
    jobstore: b.sqlite
    """


def test_many_mistakes_are_reported_at_once_with_lines(tmp_path: Path) -> None:
    """Every mistake in the file is reported in one ConfigError, in file order, with its line."""
    path = tmp_path / "pacsman.yaml"
    path.write_text(textwrap.dedent(MANY_MISTAKES))
    with pytest.raises(ConfigError, match=r"^12 problem\(s\) in the config:\n") as caught:
        load_config(path)
    assert {p.source for p in caught.value.problems} == {str(path)}
    assert {p.column for p in caught.value.problems} == {None}
    assert [f"{p.line}: {p.message}" for p in caught.value.problems] == [
        "2: local.ae_title: 'THIS TITLE IS TOO LONG' is 22 characters; an AE title has 1-16"
        " (leading and trailing spaces are not significant)",
        "3: local.port: '11112' is quoted text; write 11112 without quotes",
        "5: pacs.main.called_ae_title: required; e.g. called_ae_title: ORTHANC",
        "7: pacs.main.port: 70000 is not a TCP port; use 1-65535",
        "8: pacs.main.calledAE: unknown key; did you mean 'called_ae_title'?",
        "10: pacs.main.timeouts.connect: expected a number of seconds, got 'ten'",
        "11: pacs.main.retrieve_method: 'fetch' is not one of 'move', 'get'",
        "16: pacs.second.retrieve_window: '19:00-31:00' is not a time window;"
        ' use HH:MM-HH:MM on the 24-hour clock, quoted, e.g. "19:00-07:00"',
        "17: default_pacs: 'third' is not a node under pacs; use one of: main, second",
        "19: log.level: 'loud' is not one of 'debug', 'info', 'warning', 'error'",
        f"21: xnat.password: {SECRETS}",
        "23: jobstore: written twice (first on line 22); YAML keeps only the last, delete one",
    ]


def test_ca_bundle_without_tls_verification_is_a_contradiction() -> None:
    """ca_bundle would be silently ignored with verify_tls false, so that is an error."""
    data = _with("xnat.verify_tls", False)
    data["xnat"]["ca_bundle"] = "ca.pem"
    with pytest.raises(
        ConfigError, match=re.escape("xnat.ca_bundle: is set but verify_tls is false")
    ):
        _parse(data)


# --- files ---------------------------------------------------------------------------------------


def test_example_file_loads_with_the_documented_defaults() -> None:
    """config/pacsman.example.yaml loads cleanly and spells out exactly the defaults."""
    config = load_config(EXAMPLE)
    assert config.source == EXAMPLE
    assert list(config.pacs) == ["orthanc"]
    assert config.node() == PacsNode(
        name="orthanc", host="127.0.0.1", port=4242, called_ae_title="ORTHANC"
    )
    assert config == Config(
        local=LocalAE(), pacs={"orthanc": config.node()}, default_pacs="orthanc", source=EXAMPLE
    )


def test_example_file_commented_keys_are_valid_when_uncommented(tmp_path: Path) -> None:
    """Uncommenting every commented key (the second node too) still gives a valid config."""
    text = re.sub(r"^(\s*)# ?(\s*[a-z_]+:.*)$", r"\1\2", EXAMPLE.read_text(), flags=re.MULTILINE)
    tls = tmp_path / "tls"  # the example's TLS files, which the loader checks
    tls.mkdir()
    for name in ("pacsman.pem", "pacsman.key", "hospital-ca.pem", "research-ca.pem"):
        (tls / name).write_text("PEM\n")
        (tls / name).chmod(0o600)
    text = text.replace("/etc/pacsman/tls/", f"{tls}/")
    path = tmp_path / "full.yaml"
    path.write_text(text)
    config = load_config(path)
    hospital = config.node("hospital")
    assert (hospital.retrieve_method, hospital.retrieve_window, hospital.move_interval) == (
        "get",
        "19:00-07:00",
        60.0,
    )
    assert config.node("orthanc").retrieve_window == "19:00-07:00"
    assert config.xnat.ca_bundle is not None
    assert config.log.file == Path("logs/pacsman.jsonl")
    assert config.local.tls is not None
    assert config.node("orthanc").tls is not None


def test_yaml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    """Broken YAML is one problem placed at the parser's mark, with the parser's reason."""
    path = tmp_path / "bad.yaml"
    path.write_text("pacs:\n  main: {host: a\n  x: [\n")
    with pytest.raises(
        ConfigError, match=re.escape(f"{path}:3:4: invalid YAML: while parsing a flow mapping")
    ) as caught:
        load_config(path)
    assert len(caught.value.problems) == 1


def test_control_character_is_located(tmp_path: Path) -> None:
    """A character YAML forbids is reported with its line and column."""
    path = tmp_path / "bell.yaml"
    path.write_text('pacs: {}\nlocal: {ae_title: "A\x07"}\n')
    with pytest.raises(
        ConfigError, match=re.escape(f"{path}:2:21: invalid YAML: character U+0007")
    ):
        load_config(path)


def test_non_utf8_file_is_refused(tmp_path: Path) -> None:
    """A Latin-1 file is refused with the fix: save it as UTF-8."""
    path = tmp_path / "latin1.yaml"
    path.write_bytes('local: {ae_title: "ÉCOLE"}\n'.encode("latin-1"))
    with pytest.raises(
        ConfigError, match=re.escape("not UTF-8 text (byte 19); save the file as UTF-8")
    ):
        load_config(path)


def test_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    """A UTF-8 BOM (as written by some Windows editors) does not break loading."""
    path = tmp_path / "bom.yaml"
    path.write_bytes(b"\xef\xbb\xbf" + yaml.safe_dump(MINIMAL).encode())
    assert load_config(path).default_pacs == "main"


# --- where the file is found ---------------------------------------------------------------------


def _write(path: Path) -> Path:
    """Write a minimal valid config at ``path`` (creating folders) and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(MINIMAL))
    return path


def test_default_search_order() -> None:
    """The built-in search order is ./config/pacsman.yaml, then /etc/pacsman/pacsman.yaml."""
    expected = (Path("config/pacsman.yaml"), Path("/etc/pacsman/pacsman.yaml"))
    assert expected == DEFAULT_SEARCH


def test_explicit_path_beats_environment_and_search(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An explicit path wins over PACSMAN_CONFIG and the search list."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "config" / "pacsman.yaml")
    monkeypatch.setenv("PACSMAN_CONFIG", str(_write(tmp_path / "env.yaml")))
    explicit = _write(tmp_path / "explicit.yaml")
    assert explicit == find_config(explicit)


def test_environment_beats_search(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PACSMAN_CONFIG wins over ./config/pacsman.yaml."""
    monkeypatch.chdir(tmp_path)
    _write(tmp_path / "config" / "pacsman.yaml")
    env = _write(tmp_path / "env.yaml")
    monkeypatch.setenv("PACSMAN_CONFIG", str(env))
    assert env == find_config()


def test_working_directory_config_beats_etc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """./config/pacsman.yaml (relative to the working directory) wins over the system file."""
    monkeypatch.chdir(tmp_path)
    local = _write(tmp_path / "config" / "pacsman.yaml")
    system = _write(tmp_path / "etc" / "pacsman.yaml")
    found = find_config(search=(Path("config/pacsman.yaml"), system))
    assert local.resolve() == found.resolve()
    assert load_config(search=(Path("config/pacsman.yaml"), system)).source == Path(
        "config/pacsman.yaml"
    )


def test_search_falls_through_to_the_system_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without ./config/pacsman.yaml the next place in the search list is used."""
    monkeypatch.chdir(tmp_path)
    system = _write(tmp_path / "etc" / "pacsman.yaml")
    assert system == find_config(search=(Path("config/pacsman.yaml"), system))


def test_nothing_found_says_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no file anywhere, the error lists the places and how to start a config."""
    monkeypatch.chdir(tmp_path)
    message = (
        "no config file found; looked in: PACSMAN_CONFIG (not set), config/pacsman.yaml, "
        f"{tmp_path}/etc.yaml; run 'pacsman init' (it writes config/pacsman.yaml) and edit it"
    )
    with pytest.raises(ConfigError, match=re.escape(message)):
        find_config(search=(Path("config/pacsman.yaml"), tmp_path / "etc.yaml"))


@pytest.mark.parametrize(
    ("make_dir", "reason"), [(False, "does not exist"), (True, "is a directory")]
)
def test_explicit_path_must_be_a_file(tmp_path: Path, make_dir: bool, reason: str) -> None:
    """A missing or non-file explicit path is an error, not a silent fall-back."""
    path = tmp_path / "given.yaml"
    if make_dir:
        path.mkdir()
    _write(tmp_path / "config" / "pacsman.yaml")
    with pytest.raises(ConfigError, match=re.escape(f"{path}: the config file given {reason}")):
        find_config(path, search=(tmp_path / "config" / "pacsman.yaml",))


def test_environment_path_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A PACSMAN_CONFIG naming a missing file is an error naming the variable."""
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("PACSMAN_CONFIG", str(missing))
    with pytest.raises(ConfigError, match=re.escape(f"{missing}: PACSMAN_CONFIG does not exist")):
        find_config(search=(_write(tmp_path / "ok.yaml"),))


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("fixed", r"'fixed' has no \{n\}: every label would be the same"),
        ("{project} {n}", r"'\{project\} \{n\}' gives labels like 'P 1'; XNAT labels are 1-64"),
        ("{x}_{n}", r"'\{x\}_\{n\}' is not a valid template"),
    ],
)
def test_label_templates_are_checked(template: str, message: str) -> None:
    """Label templates must number labels and yield valid XNAT labels."""
    data = {
        "pacs": {"o": {"host": "127.0.0.1", "port": 4242, "called_ae_title": "O"}},
        "anonymization": {"session_template": template},
    }
    with pytest.raises(ConfigError, match=rf"anonymization\.session_template: {message}"):
        parse_config(data, source="c.yaml")
