"""De-identification to DICOM PS3.15 Annex E, relabelling, keyed pseudonyms, leak check.

Typical use, once per project::

    profile = load_profile(Path("config/anonymization.yaml"))   # or None: built-in default
    key = load_or_create_key(Path("~/.pacsman/PROJ.key").expanduser())
    engine = Deidentifier(profile, key=key, project="PROJ", mapping=MappingTable(path))
    result = engine.deidentify_file(src, out_dir, subject="PROJ_0001", session="PROJ_0001_MR1")
    if not result.quarantined: ...push result.path...
"""

from pacsman.anonymize.engine import AnonymizeResult, Deidentifier, quarantine_dir
from pacsman.anonymize.keys import load_or_create_key
from pacsman.anonymize.leakcheck import Originals, leak_check, leak_check_bytes
from pacsman.anonymize.mapping import MappingTable, check_template, export_mapping
from pacsman.anonymize.profile import Action, DateMode, Option, Profile, load_profile
from pacsman.errors import ConfigError

__all__ = [
    "Action",
    "AnonymizeResult",
    "ConfigError",
    "DateMode",
    "Deidentifier",
    "MappingTable",
    "Option",
    "Originals",
    "Profile",
    "check_template",
    "export_mapping",
    "leak_check",
    "leak_check_bytes",
    "load_or_create_key",
    "load_profile",
    "quarantine_dir",
]
