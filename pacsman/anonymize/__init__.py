"""De-identification to DICOM PS3.15 Annex E, relabelling, keyed pseudonyms, leak check.

Typical use, once per project::

    profile = load_profile(Path("config/anonymization.yaml"))   # or None: built-in default
    key = load_or_create_key(Path("~/.pacsman/PROJ.key").expanduser())
    engine = Deidentifier(profile, key=key, project="PROJ", mapping=MappingTable(path))
    result = engine.deidentify_file(src, out_dir, subject="PROJ_0001", session="PROJ_0001_MR1")
    if not result.quarantined: ...push result.path...

Many files, in worker processes: :func:`pacsman.anonymize.batch.deidentify_files`.  The
command line (``pacsman anonymize``, ``pacsman mapping export``) is :mod:`.cli`; the user
guide is ``docs/anonymization.md``.
"""

from pacsman.anonymize.engine import (
    AnonymizeResult,
    Deidentifier,
    Encapsulated,
    InstanceFailed,
    NotAnInstance,
    Source,
    check_label,
    hold,
    quarantine_dir,
)
from pacsman.anonymize.keys import load_or_create_key
from pacsman.anonymize.leakcheck import (
    Originals,
    leak_check,
    leak_check_bytes,
    leak_check_dataset,
)
from pacsman.anonymize.locations import default_key_path, default_mapping_path
from pacsman.anonymize.mapping import MappingTable, check_template, export_mapping
from pacsman.anonymize.profile import Action, DateMode, Option, Profile, load_profile
from pacsman.errors import ConfigError

__all__ = [
    "Action",
    "AnonymizeResult",
    "ConfigError",
    "DateMode",
    "Deidentifier",
    "Encapsulated",
    "InstanceFailed",
    "MappingTable",
    "NotAnInstance",
    "Option",
    "Originals",
    "Profile",
    "Source",
    "check_label",
    "check_template",
    "default_key_path",
    "default_mapping_path",
    "export_mapping",
    "hold",
    "leak_check",
    "leak_check_bytes",
    "leak_check_dataset",
    "load_or_create_key",
    "load_profile",
    "quarantine_dir",
]
