#!/usr/bin/env python3
"""Regenerate ``pacsman/data/ps315_profile.json`` from the shared PS3.15 Table E.1-1 facts.

Inputs (from the project's shared data folder, ``../shared/data`` beside the repository):

* ``ps3.15-table-e1-1.json`` -- Table E.1-1, revision 2024b, all option columns
  (MIT, Innolitics; ``ps3.15-table-e1-1.LICENSE.txt``);
* ``ps3.15-table-e1-1-additions-2026c.json`` -- the attributes added to the basic profile
  up to revision 2026c (basic-profile action only).

The output records the revisions, the attribution and the licence text, and adds clearly
marked ``pacsman`` rows for attributes the table omits but that an engine must treat
explicitly: a few structural ones, the keep-list (device and technique attributes research
needs), and the Type 1/2 attributes that must stay present.  ``required`` lists the table's
X rows that are Type 1 or 2 in an IOD, read as X/Z or X/D.  Run it from the repository root::

    python scripts/build_ps315_profile.py [--shared ../shared/data] [--check]

``--check`` exits 1 when the committed data file differs from what would be generated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydicom.datadict import dictionary_description, keyword_for_tag, tag_for_keyword

REVISION = "2024b"
ADDITIONS_REVISION = "2026c"
TABLE = "ps3.15-table-e1-1.json"
ADDITIONS = "ps3.15-table-e1-1-additions-2026c.json"
LICENSE = "ps3.15-table-e1-1.LICENSE.txt"
OUTPUT = Path("pacsman/data/ps315_profile.json")

#: Innolitics' option column -> the PS3.15 option name used in pacsman profiles.
OPTION_COLUMNS = {
    "cleanGraphOpt": "clean_graphics",
    "cleanStructContOpt": "clean_structured_content",
    "cleanDescOpt": "clean_descriptors",
    "rtnLongFullDatesOpt": "retain_longitudinal_full_dates",
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "rtnDevIdOpt": "retain_device_identity",
    "rtnUIDsOpt": "retain_uids",
    "rtnSafePrivOpt": "retain_safe_private",
    "rtnInstIdOpt": "retain_institution_identity",
}

#: Attributes Table E.1-1 does not list that pacsman treats explicitly, with the reason.
PACSMAN_ROWS = {
    "0040A160": (
        "Text Value",
        "D",
        "Type 1 in SR TEXT content items; not in the table, so a dummy keeps SR valid",
    ),
    "04000500": (
        "Encrypted Attributes Sequence",
        "X",
        "holds the original attributes, encrypted; not in the table",
    ),
    "4FFE0001": (
        "MAC Parameters Sequence",
        "X",
        "signatures no longer match modified data; not in the table",
    ),
    "FFFCFFFC": (
        "Data Set Trailing Padding",
        "X",
        "padding can hold remnants of earlier data; not in the table",
    ),
}

#: The keep-list: attributes outside the table with a text VR (removed by default) that
#: name devices, techniques and units, which research needs and which have no place for
#: patient data by their nature.  The leak check still reads them.
KEEP_LIST = [
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "SequenceName",
    "PulseSequenceName",
    "ConvolutionKernel",
    "ReceiveCoilName",
    "TransmitCoilName",
    "ReceiveCoilManufacturerName",
    "TransmitCoilManufacturerName",
    "FilterType",
    "ImagedNucleus",
    "Radiopharmaceutical",
    "RadiopharmaceuticalRoute",
    "ReconstructionMethod",
    "AttenuationCorrectionMethod",
    "ScatterCorrectionMethod",
    "ContrastBolusRoute",
    "CollimatorGridName",
    "EnergyWindowName",
    "TransducerData",
    "TriggerSourceOrType",
    "RescaleType",
    "WindowCenterWidthExplanation",
    "LUTExplanation",
    "PixelSpacingCalibrationDescription",
    "PositionReferenceIndicator",
    "DetectorManufacturerName",
    "DetectorManufacturerModelName",
    "AcquisitionDeviceProcessingCode",
    "SecondaryCaptureDeviceManufacturer",
    "SecondaryCaptureDeviceManufacturerModelName",
    "SecondaryCaptureDeviceSoftwareVersions",
    "AlgorithmName",
    "AlgorithmVersion",
    "SegmentAlgorithmName",
    "MIMETypeOfEncapsulatedDocument",
    "ListOfMIMETypes",
    "CodingSchemeRegistry",
    "FunctionalGroupPrivateCreator",
    "SourceIsotopeName",
    "FontName",
    "CSSFontName",
    "MultiCoilElementName",
    "MultiCoilConfiguration",
]
#: Outside the table, Type 2 in an IOD pacsman handles: present but emptied.
TYPE_2 = {
    "DocumentTitle": "Type 2 in the Encapsulated Document module",
    "ContentDescription": "Type 2 in the Content Identification macro (presentation states, SEG)",
}
#: Outside the table, Type 1 in an IOD pacsman handles: cleaned (scrubbed of this patient's
#: identifiers, dates and numbers), and a dummy when nothing is left.
TYPE_1 = {
    "ContentLabel": "Type 1 in the Content Identification macro; free text in a CS",
    "GraphicLayer": "Type 1 in presentation states; layers refer to each other by this value",
    "GraphicGroupLabel": "Type 1 in the Graphic Group module",
    "SegmentLabel": "Type 1 in the Segment Description macro",
    "TrackingID": "Type 1C in the Segment Description macro",
    "StackID": "Type 1C in the Frame Content macro",
    "BeamName": "Type 1 in the RT Ion Beams module",
    "RTImageLabel": "Type 1 in the RT Image module",
    "ApplicatorID": "Type 1 in RT applicator sequences",
    "BolusID": "Type 1 in RT bolus sequences",
    "WedgeID": "Type 1 in RT Ion wedge sequences",
    "CompensatorID": "Type 1 in RT Ion compensator sequences",
    "BlockTrayID": "Type 1 in RT Ion block sequences",
    "MaterialID": "Type 2 in RT block and compensator sequences",
    "RangeShifterID": "Type 1 in RT Ion range shifter sequences",
    "LateralSpreadingDeviceID": "Type 1 in RT Ion lateral spreading device sequences",
    "RangeModulatorID": "Type 1 in RT Ion range modulator sequences",
    "SnoutID": "Type 1 in RT Ion snout sequences",
    "GeneralAccessoryID": "Type 1 in RT general accessory sequences",
    "BrachyAccessoryDeviceID": "Type 1 in the RT Brachy Application Setups module",
    "SourceApplicatorID": "Type 1 in the RT Brachy Application Setups module",
    "ChannelShieldID": "Type 1 in the RT Brachy Application Setups module",
}
#: Outside the table, Type 1 or 1C where they occur, and an identity by nature: a dummy.
TYPE_1_DUMMY = {
    "LocalNamespaceEntityID": "Type 1C in the HL7v2 Hierarchic Designator macro (an issuer)",
    "UniversalEntityID": "Type 1C in the HL7v2 Hierarchic Designator macro (an issuer's OID)",
}
#: Outside the table, and meaningless once what they qualify is removed: removed too.
REMOVED_WITH = {
    "PatientAlternativeCalendar": "Type 1C: only with the alternative-calendar dates, removed",
}
#: Table rows whose X would drop an attribute that is Type 1 or 2 in an IOD: the table's
#: X is read as the compound X/Z or X/D there, which removes the value all the same.
REQUIRED = {
    "RequestedProcedureID": ("Z", "Type 2 in the Referenced Request Sequence of SR and KOS"),
    "PresentationCreationDate": ("D", "Type 1 in the Presentation State Identification module"),
    "PresentationCreationTime": ("D", "Type 1 in the Presentation State Identification module"),
}


def _tag_of(keyword: str) -> str:
    tag = tag_for_keyword(keyword)
    if tag is None:
        raise SystemExit(f"{keyword}: not a DICOM keyword in pydicom's dictionary")
    return f"{tag:08X}"


def _outside_rows() -> dict[str, dict[str, Any]]:
    """The keep-list and the Type 1/2 rows for attributes outside the table."""
    rows: dict[str, dict[str, Any]] = {}
    for keyword in KEEP_LIST:
        reason = "keep-list: names a device, technique or unit; research needs it"
        rows[_tag_of(keyword)] = {"basic": "K", "reason": reason, "keyword": keyword}
    for keyword, reason in TYPE_2.items():
        rows[_tag_of(keyword)] = {"basic": "Z", "reason": reason, "keyword": keyword}
    for keyword, reason in TYPE_1.items():
        row = {"basic": "C", "reason": reason, "keyword": keyword, "type": 1}
        rows[_tag_of(keyword)] = row
    for keyword, reason in TYPE_1_DUMMY.items():
        rows[_tag_of(keyword)] = {"basic": "D", "reason": reason, "keyword": keyword}
    for keyword, reason in REMOVED_WITH.items():
        rows[_tag_of(keyword)] = {"basic": "X", "reason": reason, "keyword": keyword}
    return rows


def _row(entry: dict[str, Any], source: str) -> dict[str, Any]:
    options = {
        OPTION_COLUMNS[column]: entry[column] for column in OPTION_COLUMNS if entry.get(column)
    }
    row: dict[str, Any] = {"name": entry["name"], "basic": entry["basicProfile"]}
    if options:
        row["options"] = dict(sorted(options.items()))
    row["source"] = source
    return row


def _keyword(tag_id: str) -> str:
    try:
        return keyword_for_tag(int(tag_id, 16)) or ""
    except ValueError:
        return ""


Rows = dict[str, dict[str, Any]]


def _split(entries: list[tuple[dict[str, Any], str]]) -> tuple[Rows, Rows, dict[str, Any]]:
    """Attributes by tag (plus pacsman's rows), repeating-group masks, the private row."""
    attributes: Rows = {}
    masks: Rows = {}
    private: dict[str, Any] = {}
    for entry, source in entries:
        tag_id = entry["id"].upper()
        row = _row(entry, source)
        if tag_id.startswith("GGGG"):
            private = row
        elif "X" in tag_id:
            masks[tag_id.lower()] = row
        else:
            if tag_id in attributes:
                raise SystemExit(f"{source}: ({tag_id}) is listed twice; check the shared data")
            row["keyword"] = _keyword(tag_id)
            attributes[tag_id] = row
    for tag_id, (name, action, reason) in PACSMAN_ROWS.items():
        attributes[tag_id] = {
            "name": name,
            "basic": action,
            "source": "pacsman",
            "reason": reason,
            "keyword": _keyword(tag_id),
        }
    for tag_id, row in _outside_rows().items():
        if tag_id in attributes:
            raise SystemExit(f"{row['keyword']} is in the table; take it off pacsman's lists")
        name = dictionary_description(int(tag_id, 16))
        attributes[tag_id] = {"name": name, "source": "pacsman"} | row
    return attributes, masks, private


def _required(attributes: Rows) -> Rows:
    """The table rows read as X/Z or X/D (see REQUIRED)."""
    rows: Rows = {}
    for keyword, (action, reason) in REQUIRED.items():
        tag_id = _tag_of(keyword)
        if attributes.get(tag_id, {}).get("basic") != "X":
            raise SystemExit(f"{keyword} is no longer X in the table; review REQUIRED")
        rows[tag_id] = {"keyword": keyword, "action": action, "reason": reason}
    return rows


def build(shared: Path) -> dict[str, Any]:
    """Return the data file's content built from the shared JSON files in ``shared``."""
    table = json.loads((shared / TABLE).read_text(encoding="utf-8"))
    additions = json.loads((shared / ADDITIONS).read_text(encoding="utf-8"))
    entries = [(e, REVISION) for e in table] + [(e, ADDITIONS_REVISION) for e in additions]
    attributes, masks, private = _split(entries)
    licence = (shared / LICENSE).read_text(encoding="utf-8")
    return {
        "format": 1,
        "standard": "DICOM PS3.15 Annex E, Table E.1-1",
        "revision": REVISION,
        "additions_revision": ADDITIONS_REVISION,
        "attribution": (
            f"Table E.1-1 rev {REVISION} as JSON by Innolitics, LLC (MIT licence below); "
            f"basic-profile additions up to rev {ADDITIONS_REVISION}; rows with source "
            "'pacsman' are pacsman's own and are not part of the standard."
        ),
        "license": licence,
        "option_columns": OPTION_COLUMNS,
        "private": private,
        "masks": dict(sorted(masks.items())),
        "attributes": dict(sorted(attributes.items())),
        "required": _required(attributes),
    }


def main(argv: list[str] | None = None) -> int:
    """Write (or with ``--check`` compare) the package's PS3.15 data file."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = json.dumps(build(args.shared), indent=1, ensure_ascii=False) + "\n"
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run {Path(__file__).name}", file=sys.stderr)
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
