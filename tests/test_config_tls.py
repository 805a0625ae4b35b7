"""The ``tls`` sections of the config: files checked at load, key modes, pairs, warnings."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from pacsman.config import Config, TlsConfig, parse_config
from pacsman.config._yaml import load_yaml
from pacsman.errors import ConfigError


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    """A folder with ca.pem, cert.pem and key.pem (content is not read at config load)."""
    for name in ("ca.pem", "cert.pem"):
        (tmp_path / name).write_text("-----BEGIN CERTIFICATE-----\n", encoding="ascii")
    key = tmp_path / "key.pem"
    key.write_text("-----BEGIN PRIVATE KEY-----\n", encoding="ascii")
    key.chmod(0o600)
    return tmp_path


def _parse(text: str, folder: Path) -> Config:
    text = textwrap.dedent(text).replace("DIR", str(folder))
    return parse_config(load_yaml(text), source="t.yaml")


def _problems(text: str, folder: Path) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _parse(text, folder)
    return [str(problem) for problem in caught.value.problems]


NODE = """\
pacs:
  main:
    host: 127.0.0.1
    port: 4242
    called_ae_title: ORTHANC
"""


def test_no_tls_section_means_plain_tcp(pem: Path) -> None:
    config = _parse(NODE, pem)
    assert config.node().tls is None
    assert config.local.tls is None


def test_every_side_reads_its_tls_section(pem: Path) -> None:
    config = _parse(
        """\
        local:
          tls: {cert: DIR/cert.pem, key: DIR/key.pem, ca: DIR/ca.pem}
        pacs:
          main:
            host: 127.0.0.1
            port: 4242
            called_ae_title: ORTHANC
            tls: {ca: DIR/ca.pem, cert: DIR/cert.pem, key: DIR/key.pem, check_hostname: false}
        push:
          dicom:
            host: 127.0.0.1
            port: 104
            called_ae_title: RESEARCH
            tls: {ca: DIR/ca.pem}
        """,
        pem,
    )
    assert config.local.tls == TlsConfig(
        ca=pem / "ca.pem", cert=pem / "cert.pem", key=pem / "key.pem"
    )
    node_tls = config.node().tls
    assert node_tls is not None
    assert node_tls.check_hostname is False
    assert node_tls.verify
    assert config.push.dicom is not None
    assert config.push.dicom.tls == TlsConfig(ca=pem / "ca.pem")


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_key_others_may_read_is_refused_with_the_chmod_fix(pem: Path, mode: int) -> None:
    (pem / "key.pem").chmod(mode)
    problems = _problems(NODE + "    tls: {cert: DIR/cert.pem, key: DIR/key.pem}\n", pem)
    assert len(problems) == 1
    assert "pacs.main.tls.key" in problems[0]
    assert f"mode {mode:04o}" in problems[0]
    assert f"chmod 600 {pem / 'key.pem'}" in problems[0]


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_a_key_only_its_owner_may_read_is_accepted(pem: Path, mode: int) -> None:
    (pem / "key.pem").chmod(mode)
    config = _parse(NODE + "    tls: {cert: DIR/cert.pem, key: DIR/key.pem}\n", pem)
    assert config.node().tls is not None


def test_missing_files_and_half_pairs_are_all_reported(pem: Path) -> None:
    problems = _problems(
        NODE
        + "    tls: {ca: DIR/nope.pem, cert: DIR/cert.pem}\n"
        + "local:\n  tls: {key: DIR/key.pem}\n",
        pem,
    )
    text = "\n".join(problems)
    assert "pacs.main.tls.ca" in text
    assert "cannot be read" in text
    assert "pacs.main.tls.key: required with cert" in text
    assert "local.tls.cert: required with key" in text
    assert "local.tls.ca: required while verify is true" in text


def test_a_folder_is_not_a_certificate(pem: Path) -> None:
    problems = _problems(NODE + "    tls: {ca: DIR}\n", pem)
    assert "is a directory, not a PEM file" in problems[0]


def test_the_scp_needs_a_certificate(pem: Path) -> None:
    problems = _problems(NODE + "local:\n  tls: {verify: false}\n", pem)
    assert any("local.tls.cert: required for the Storage SCP" in p for p in problems)


def test_verify_false_works_with_a_warning(pem: Path) -> None:
    config = _parse(NODE + "    tls: {verify: false}\n", pem)
    assert config.node().tls == TlsConfig(verify=False)
    assert any("pacs.main.tls.verify" in str(w) and "pose as" in str(w) for w in config.warnings)


def test_unknown_tls_keys_get_a_suggestion(pem: Path) -> None:
    problems = _problems(NODE + "    tls: {ca_file: DIR/ca.pem}\n", pem)
    assert "pacs.main.tls.ca_file: unknown key" in problems[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_an_unreadable_certificate_is_reported(pem: Path) -> None:
    (pem / "cert.pem").chmod(0)
    problems = _problems(NODE + "    tls: {cert: DIR/cert.pem, key: DIR/key.pem}\n", pem)
    assert "not readable" in problems[0]
