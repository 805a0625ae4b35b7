"""The YAML config, validated once, completely, into frozen dataclasses.

:func:`load_config` finds the file (:func:`find_config`), parses it keeping line numbers and
hands the tree to :func:`parse_config`, which reports every problem at once in one
:class:`~pacsman.errors.ConfigError`.  Each :class:`~pacsman.errors.Problem` starts with the
key path (``pacs.main.port: 70000 is not a TCP port; use 1-65535``) and carries the line.

The keys, their types and defaults are documented in ``config/README.md``; every key is
shown, commented, in ``config/pacsman.example.yaml``.  Secrets never live in the file.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Literal
from urllib.parse import parse_qsl, urlsplit

import yaml

from pacsman.config import _values as v
from pacsman.config._reader import Problems, Section, scan_tree
from pacsman.config._yaml import load_yaml, not_a_regular_file, read_config_text
from pacsman.config.dqr import DqrConfig, parse_dqr
from pacsman.config.push import DicomTarget, PushConfig, XnatConfig, parse_push, parse_xnat
from pacsman.config.serve import ServeConfig, parse_serve
from pacsman.config.tls import TlsConfig, parse_tls
from pacsman.errors import ConfigError, Problem

__all__ = [
    "DEFAULT_SEARCH",
    "AnonymizationConfig",
    "Config",
    "DicomTarget",
    "DqrConfig",
    "LocalAE",
    "LogConfig",
    "PacsNode",
    "PushConfig",
    "ServeConfig",
    "Timeouts",
    "TlsConfig",
    "XnatConfig",
    "find_config",
    "jobstore_location",
    "load_config",
    "parse_config",
]

#: Where :func:`find_config` looks when neither a path nor ``PACSMAN_CONFIG`` is given.
DEFAULT_SEARCH: tuple[Path, ...] = (Path("config/pacsman.yaml"), Path("/etc/pacsman/pacsman.yaml"))
ENV_VAR = "PACSMAN_CONFIG"
_COPY_EXAMPLE = "run 'pacsman init' (it writes config/pacsman.yaml) and edit it"
_NODE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}")
#: The URL schemes of a PostgreSQL job store; any other ``scheme://`` is refused.
_POSTGRESQL_SCHEMES = ("postgresql", "postgres")
_URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: Where a PostgreSQL password goes instead of the config.
PGPASSWORD_FIX = (
    "a password never goes in the config or on the command line: give it in PGPASSWORD, "
    "in ~/.pgpass, in the file PGPASSFILE names, or under systemd with "
    "LoadCredential=pgpass:/etc/pacsman/pgpass and Environment=PGPASSFILE=%d/pgpass"
)

RetrieveMethod = Literal["move", "get"]
RetrieveLevel = Literal["series", "study"]
QueryModel = Literal["study", "patient"]
CountInstances = Literal["auto", "always", "never"]
LogLevel = Literal["debug", "info", "warning", "error"]
ConsoleFormat = Literal["auto", "human", "json"]
_RETRIEVE_METHODS: tuple[RetrieveMethod, ...] = ("move", "get")
_RETRIEVE_LEVELS: tuple[RetrieveLevel, ...] = ("series", "study")
_QUERY_MODELS: tuple[QueryModel, ...] = ("study", "patient")
_COUNT_INSTANCES: tuple[CountInstances, ...] = ("auto", "always", "never")
_LOG_LEVELS: tuple[LogLevel, ...] = ("debug", "info", "warning", "error")
_CONSOLE_FORMATS: tuple[ConsoleFormat, ...] = ("auto", "human", "json")
Unsolicited = Literal["refuse", "keep"]
_UNSOLICITED: tuple[Unsolicited, ...] = ("refuse", "keep")
#: Encapsulated documents (PDF, CDA, ...): left out of the output, or the session held.
EncapsulatedPolicy = Literal["omit", "quarantine"]
_ENCAPSULATED: tuple[EncapsulatedPolicy, ...] = ("omit", "quarantine")


@dataclass(frozen=True)
class LocalAE:
    """Our own Application Entity: the Storage SCP that receives C-MOVE/C-GET results."""

    ae_title: str = "PACSMAN"
    bind_host: str = "127.0.0.1"
    port: int = 11112
    #: Calling AE titles the Storage SCP accepts; empty = the PACS nodes' called_ae_titles.
    allowed_calling_ae_titles: tuple[str, ...] = ()
    #: The Storage SCP answers only to ``ae_title`` as called AE title, unless this is true.
    accept_any_called_ae_title: bool = False
    #: Seconds a new connection has to send its whole A-ASSOCIATE-RQ, else it is closed.
    association_request_timeout: float = 5.0
    #: Connections (waiting or associated) one peer address may hold at once, 1..1000.
    max_connections_per_address: int = 8
    #: Instances of series no retrieve asked for: refuse them (0x0124), or keep them in
    #: ``_unrouted/`` up to ``unsolicited_quota_mb`` (then 0xA700).
    unsolicited: Unsolicited = "refuse"
    unsolicited_quota_mb: int = 1024
    #: DICOM TLS for the Storage SCP; ``None`` = plain TCP.
    tls: TlsConfig | None = None


@dataclass(frozen=True)
class Timeouts:
    """Network timeouts towards one PACS, in seconds, all > 0."""

    connect: float = 10.0  # TCP connect
    acse: float = 30.0  # association negotiation / release
    dimse: float = 600.0  # one DIMSE response (C-MOVE responses can be minutes apart)
    network: float = 600.0  # idle socket


@dataclass(frozen=True)
class PacsNode:
    """One PACS we query and retrieve from; ``name`` is its key under ``pacs:``."""

    name: str
    host: str
    port: int
    called_ae_title: str
    retrieve_method: RetrieveMethod = "move"
    max_associations: int = 1  # 1..32; with several head nodes, for all of them together
    #: The most one head node opens (its retrieve workers too); None: max_associations.
    max_associations_per_head_node: int | None = None
    timeouts: Timeouts = Timeouts()
    query_model: QueryModel = "study"
    #: SpecificCharacterSet sent with C-FIND identifiers (a DICOM defined term).
    character_set: str = "ISO_IR 192"
    #: Image-level C-FIND count: when NumberOfSeriesRelatedInstances is missing, always, never.
    count_instances: CountInstances = "auto"
    move_interval: float = 0.0  # min seconds between C-MOVE starts
    retrieve_window: str | None = None  # "HH:MM-HH:MM", may wrap midnight
    max_attempts: int = 50  # retry budget per operation, 1..1000
    retrieve_level: RetrieveLevel = "series"  # C-MOVE/C-GET per series, or per study
    retrieve_passes: int = 3  # verify: re-request incomplete series up to this many passes
    tls: TlsConfig | None = None  # DICOM TLS towards this PACS; None = plain TCP

    @property
    def head_node_associations(self) -> int:
        """Associations this head node opens at most (``max_associations`` for the whole
        cluster, ``max_associations_per_head_node`` for each of its nodes)."""
        own = self.max_associations_per_head_node or self.max_associations
        return min(own, self.max_associations)


@dataclass(frozen=True)
class LogConfig:
    """Logging: level, an optional JSON-lines file (appended), and the console format."""

    level: LogLevel = "info"
    file: Path | None = None
    console: ConsoleFormat = "auto"  # auto = human on a TTY, JSON otherwise
    #: Off a terminal: seconds between two ``progress`` events.
    progress_interval: float = 30.0


@dataclass(frozen=True)
class AnonymizationConfig:
    """De-identification: on by default; ``profile`` overrides the built-in profile."""

    enabled: bool = True
    profile: Path | None = None
    #: Labels for query rows without Subject/Session; fields {project} and {n} (stable numbering).
    subject_template: str = "{project}_S{n:04d}"
    session_template: str = "{project}_E{n:05d}"
    #: omit: leave encapsulated documents out (recorded) and push the rest of the session;
    #: quarantine: hold them, and so the session, for review.
    encapsulated: EncapsulatedPolicy = "omit"


@dataclass(frozen=True)
class Config:
    """The whole validated config.  ``pacs`` keeps the file's order and is read-only."""

    local: LocalAE
    pacs: Mapping[str, PacsNode]
    default_pacs: str
    store_root: Path = Path("data")
    #: A SQLite file, or a ``postgresql://user@host[:port]/db`` URL (never with a password).
    jobstore: Path | str = Path("pacsman-jobs.sqlite")
    log: LogConfig = LogConfig()
    xnat: XnatConfig = XnatConfig()  # noqa: RUF009 - a frozen dataclass (_config_push)
    anonymization: AnonymizationConfig = AnonymizationConfig()
    push: PushConfig = PushConfig()  # noqa: RUF009 - a frozen dataclass (_config_push)
    serve: ServeConfig = ServeConfig()  # noqa: RUF009 - a frozen dataclass (config/serve.py)
    dqr: DqrConfig = DqrConfig()  # noqa: RUF009 - a frozen dataclass (config/dqr.py)
    source: Path | None = None
    #: Settings that work but need a look (e.g. ``bind_host: 0.0.0.0``), in file order.
    warnings: tuple[Problem, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "pacs", MappingProxyType(dict(self.pacs)))
        if self.default_pacs not in self.pacs:
            raise ValueError(f"default_pacs {self.default_pacs!r} is not one of the PACS nodes")
        for name, node in self.pacs.items():
            if node.name != name:
                raise ValueError(f"PACS node {node.name!r} is filed under {name!r}")

    @property
    def character_sets(self) -> dict[str, str]:
        """Each PACS node's ``character_set``, by node name (what a query file may send)."""
        return {name: node.character_set for name, node in self.pacs.items()}

    def node(self, name: str | None = None) -> PacsNode:
        """Return the PACS node called ``name``, or the default node when ``name`` is None.

        Raises:
            ConfigError: no node has that name; the message lists the known ones.
        """
        key = self.default_pacs if name is None else name
        if key in self.pacs:
            return self.pacs[key]
        near = v.suggest(key, self.pacs)
        hint = f" (did you mean {near!r}?)" if near else ""
        known = ", ".join(self.pacs)
        message = f"pacs.{key}: no such PACS node in the config; known nodes: {known}{hint}"
        source = str(self.source) if self.source is not None else "<config>"
        raise ConfigError([Problem(source=source, message=message)])


def find_config(explicit: Path | None = None, *, search: Sequence[Path] = DEFAULT_SEARCH) -> Path:
    """Return the config file to use: ``explicit``, else ``$PACSMAN_CONFIG``, else ``search``.

    Relative paths are taken from the current directory; ``~`` is expanded.

    Raises:
        ConfigError: the explicit or ``PACSMAN_CONFIG`` path is not a file, or no file in
            ``search`` exists (the message says where it looked and how to start one).
    """
    if explicit is not None:
        return _must_exist(Path(explicit).expanduser(), "the config file given")
    from_env = os.environ.get(ENV_VAR, "").strip()
    if from_env:
        return _must_exist(Path(from_env).expanduser(), ENV_VAR)
    for candidate in search:
        if candidate.expanduser().is_file():
            return candidate.expanduser()
    looked = ", ".join([f"{ENV_VAR} (not set)", *(str(p) for p in search)])
    message = f"no config file found; looked in: {looked}; {_COPY_EXAMPLE}"
    raise ConfigError([Problem(source="<config>", message=message)])


def _must_exist(path: Path, what: str) -> Path:
    if path.is_file():
        return path
    try:
        reason = f"is {not_a_regular_file(path.stat().st_mode)}, not a regular file"
    except OSError:
        reason = "does not exist"
    message = f"{what} {reason}; give the path of a YAML config file, or {_COPY_EXAMPLE}"
    raise ConfigError([Problem(source=str(path), message=message)])


def load_config(path: Path | None = None, *, search: Sequence[Path] = DEFAULT_SEARCH) -> Config:
    """Find, read and validate the config (see :func:`find_config` for the search order).

    Raises:
        ConfigError: the file is missing, unreadable, not YAML, or breaks any rule; every
            problem is listed at once.
    """
    found = find_config(path, search=search)
    source = str(found)
    content = read_config_text(found)
    try:
        data = load_yaml(content)
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(source, exc, content)]) from None
    return parse_config(data, source=source)


def _yaml_problem(source: str, exc: yaml.YAMLError, content: str) -> Problem:
    """One Problem for a YAML syntax error, placed where the parser stopped."""
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        reason = "; ".join(str(part) for part in (exc.context, exc.problem) if part)
        line, column = (mark.line + 1, mark.column + 1) if mark else (None, None)
        return Problem(source, f"invalid YAML: {reason}", line=line, column=column)
    if isinstance(exc, yaml.reader.ReaderError):
        before = content[: exc.position]
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        reason = f"character U+{exc.character:04X} is not allowed in YAML; delete it"
        return Problem(source, f"invalid YAML: {reason}", line=line, column=column)
    return Problem(source, f"invalid YAML: {exc}")


def parse_config(data: object, *, source: str) -> Config:
    """Validate an already-parsed YAML tree (``source`` names where it came from).

    Line numbers are reported when ``data`` came from :func:`pacsman.config._yaml.load_yaml`.

    Raises:
        ConfigError: every problem found, at once.
    """
    problems = Problems(source)
    if data is None:
        problems.add("", f"the file is empty; {_COPY_EXAMPLE}", None)
    elif not isinstance(data, Mapping):
        got = v.describe(data)
        problems.add("", f"expected a mapping of keys (local:, pacs:, ...), got {got}", 1)
    else:
        for path, message, line in scan_tree(data):
            problems.add(path, message, line)
        config = _parse_root(Section(problems, "", data), source)
        if config is not None and not problems.found:
            return replace(config, warnings=problems.warnings_in_file_order())
    raise ConfigError(problems.in_file_order())


def jobstore_location(value: object) -> Path | str:
    """The job store: a SQLite file path, or a ``postgresql://user@host[:port]/db`` URL.

    A URL (``postgres://`` too) must name a database and must not hold a password.

    Raises:
        v.Invalid: another ``scheme://``, a URL with a password or without a database.
    """
    if not isinstance(value, str) or not _URL_SCHEME.match(value.strip()):
        return v.file_path(value)
    url = value.strip()
    example = "postgresql://user@host[:port]/database"
    scheme = _URL_SCHEME.match(url)
    assert scheme is not None
    if scheme.group(1).lower() not in _POSTGRESQL_SCHEMES:
        shown = v.describe(_USERINFO.sub(r"\1", url))
        raise v.Invalid(f"{shown} is not a job store; use a file path, or {example}")
    try:
        parts = urlsplit(url)
        _ = parts.port
    except ValueError:
        raise v.Invalid(
            f"{v.describe(_shown_url(url))} is not a valid URL; use {example}"
        ) from None
    if parts.password is not None or any(k == "password" for k, _ in parse_qsl(parts.query)):
        raise v.Invalid(
            f"the URL {_shown_url(url)!r} holds a password; {PGPASSWORD_FIX}; then write "
            f"the URL without it, e.g. {_shown_url(url, user_only=True)}"
        )
    if not parts.path.strip("/") or "/" in parts.path.strip("/"):
        raise v.Invalid(f"{v.describe(_shown_url(url))} names no database; use {example}")
    return scheme.group(1).lower() + url[scheme.end(1) :]


_USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)[^/?#]*@")


def _shown_url(url: str, *, user_only: bool = False) -> str:
    """``url`` with its password as ``***`` (or dropped, ``user_only``) and no query."""
    parts = urlsplit(url)
    userinfo, at, host = parts.netloc.rpartition("@")
    user = userinfo.partition(":")[0]
    secret = "" if user_only or ":" not in userinfo else ":***"
    netloc = f"{user}{secret}{at}{host}" if at else host
    return parts._replace(netloc=netloc, query="", fragment="").geturl()


def _parse_root(root: Section, source: str) -> Config | None:
    local = _parse_local(root.section("local"))
    nodes = _parse_nodes(root.section("pacs"))
    _warn_connection_cap(root, local, nodes)
    default = _default_pacs(root, nodes)
    store_root = root.get("store_root", v.file_path, Config.store_root)
    jobstore = root.get("jobstore", jobstore_location, Config.jobstore)
    log = _parse_log(root.section("log"))
    xnat = parse_xnat(root.section("xnat"))
    anonymization = _parse_anonymization(root.section("anonymization"))
    push = parse_push(root.section("push"))
    serve = parse_serve(root.section("serve"))
    dqr = parse_dqr(root.section("dqr"))
    root.finish()
    if root.problems.found or default is None or None in nodes.values():
        return None
    return Config(
        local=local,
        pacs={name: node for name, node in nodes.items() if node is not None},
        default_pacs=default,
        store_root=store_root,
        jobstore=jobstore,
        log=log,
        xnat=xnat,
        anonymization=anonymization,
        push=push,
        serve=serve,
        dqr=dqr,
        source=Path(source),
    )


def _warn_connection_cap(
    root: Section, local: LocalAE, nodes: Mapping[str, PacsNode | None]
) -> None:
    """A PACS moving N series at once opens N connections to the Storage SCP."""
    busiest = max((n.max_associations for n in nodes.values() if n is not None), default=1)
    cap = local.max_connections_per_address
    if busiest > cap:
        root.section("local").warn(
            "max_connections_per_address",
            f"{cap} is fewer than the {busiest} retrieves a PACS node may run at once "
            f"(max_associations); its extra connections would be refused: set it to {busiest} "
            "or more",
        )


def _default_pacs(root: Section, nodes: Mapping[str, object]) -> str | None:
    """Return ``default_pacs``, or the first node when it is not set."""
    default = root.get("default_pacs", v.name, None)
    if default is None or not nodes:
        return default if default is not None else next(iter(nodes), None)
    if default not in nodes:
        near = v.suggest(default, nodes)
        hint = f"did you mean {near!r}?" if near else "use one of: " + ", ".join(nodes)
        where = root.line_of("default_pacs")
        root.problems.add("default_pacs", f"{default!r} is not a node under pacs; {hint}", where)
    return default


def _parse_local(local: Section) -> LocalAE:
    result = LocalAE(
        ae_title=local.get("ae_title", v.ae_title, LocalAE.ae_title),
        bind_host=local.get("bind_host", v.host, LocalAE.bind_host),
        port=local.get("port", v.tcp_port, LocalAE.port),
        allowed_calling_ae_titles=local.get_list("allowed_calling_ae_titles", v.ae_title),
        accept_any_called_ae_title=local.get(
            "accept_any_called_ae_title", v.boolean, LocalAE.accept_any_called_ae_title
        ),
        association_request_timeout=local.get(
            "association_request_timeout", v.seconds(), LocalAE.association_request_timeout
        ),
        max_connections_per_address=local.get(
            "max_connections_per_address",
            v.int_between(1, 1000),
            LocalAE.max_connections_per_address,
        ),
        unsolicited=local.get("unsolicited", v.choice(_UNSOLICITED), LocalAE.unsolicited),
        unsolicited_quota_mb=local.get(
            "unsolicited_quota_mb", v.int_between(1, 10_000_000), LocalAE.unsolicited_quota_mb
        ),
        tls=parse_tls(local, server=True),
    )
    local.warn("bind_host", v.bind_host_warning(result.bind_host))
    local.finish()
    return result


def _parse_nodes(pacs: Section) -> dict[str, PacsNode | None]:
    """Return each node by name (``None`` where a required key is missing or wrong)."""
    names = pacs.keys()
    if not names:
        example = "pacs: {orthanc: {host: 127.0.0.1, port: 4242, called_ae_title: ORTHANC}}"
        pacs.problems.add("pacs", f"at least one PACS node is required, e.g. {example}", pacs.line)
    nodes: dict[str, PacsNode | None] = {}
    for name in names:
        if not _NODE_NAME.fullmatch(name):
            pacs.problems.add(
                pacs.child(name),
                f"{name!r} is not a valid node name; use 1-32 letters, digits, '_', '.' or '-'",
                pacs.line_of(name),
            )
        node = pacs.section(name)
        nodes[name] = _parse_node(name, node) if node.is_mapping else None
    return nodes


def _parse_node(name: str, node: Section) -> PacsNode | None:
    """Return the node, or ``None`` when a required key is missing or wrong."""
    host = node.require("host", v.host, "host: 127.0.0.1")
    port = node.require("port", v.tcp_port, "port: 4242")
    called = node.require("called_ae_title", v.ae_title, "called_ae_title: ORTHANC")
    d = PacsNode  # the class attributes hold the defaults
    result = PacsNode(
        name=name,
        host=host or "",
        port=port or 0,
        called_ae_title=called or "",
        retrieve_method=node.get("retrieve_method", v.choice(_RETRIEVE_METHODS), d.retrieve_method),
        max_associations=node.get("max_associations", v.int_between(1, 32), d.max_associations),
        max_associations_per_head_node=node.get(
            "max_associations_per_head_node", v.int_between(1, 32), None
        ),
        timeouts=_parse_timeouts(node.section("timeouts")),
        query_model=node.get("query_model", v.choice(_QUERY_MODELS), d.query_model),
        character_set=node.get("character_set", v.character_set, d.character_set),
        count_instances=node.get("count_instances", v.choice(_COUNT_INSTANCES), d.count_instances),
        move_interval=node.get("move_interval", v.seconds(allow_zero=True), d.move_interval),
        retrieve_window=node.get("retrieve_window", v.time_window, d.retrieve_window),
        max_attempts=node.get("max_attempts", v.int_between(1, 1000), d.max_attempts),
        retrieve_level=node.get("retrieve_level", v.choice(_RETRIEVE_LEVELS), d.retrieve_level),
        retrieve_passes=node.get("retrieve_passes", v.int_between(1, 20), d.retrieve_passes),
        tls=parse_tls(node, server=False),
    )
    node.finish()
    return None if host is None or port is None or called is None else result


def _parse_timeouts(section: Section) -> Timeouts:
    positive = v.seconds()
    result = Timeouts(
        connect=section.get("connect", positive, Timeouts.connect),
        acse=section.get("acse", positive, Timeouts.acse),
        dimse=section.get("dimse", positive, Timeouts.dimse),
        network=section.get("network", positive, Timeouts.network),
    )
    section.finish()
    return result


def _parse_log(section: Section) -> LogConfig:
    result = LogConfig(
        level=section.get("level", v.choice(_LOG_LEVELS), LogConfig.level),
        file=section.get("file", v.file_path, LogConfig.file),
        console=section.get("console", v.choice(_CONSOLE_FORMATS), LogConfig.console),
        progress_interval=section.get(
            "progress_interval", v.seconds(), LogConfig.progress_interval
        ),
    )
    section.finish()
    return result


def _parse_anonymization(section: Section) -> AnonymizationConfig:
    result = AnonymizationConfig(
        enabled=section.get("enabled", v.boolean, AnonymizationConfig.enabled),
        profile=section.get("profile", v.file_path, AnonymizationConfig.profile),
        subject_template=section.get(
            "subject_template", v.label_template, AnonymizationConfig.subject_template
        ),
        session_template=section.get(
            "session_template", v.label_template, AnonymizationConfig.session_template
        ),
        encapsulated=section.get(
            "encapsulated", v.choice(_ENCAPSULATED), AnonymizationConfig.encapsulated
        ),
    )
    section.finish()
    return result
