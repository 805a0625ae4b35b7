"""What the emulator says about itself: version, the XSD it serves, and search elements.

The XSD is the original hand-written schema of the contract's Appendix A, with one extra
session type and scan type per modality the importer can produce.
"""

from __future__ import annotations

from types import MappingProxyType

__all__ = [
    "BUILD_INFO",
    "SCAN_TYPES",
    "SCHEMA_NAMES",
    "SESSION_TYPES",
    "XNAT_VERSION",
    "schema_text",
    "search_fields",
    "session_type_for",
]

XNAT_VERSION = "1.8.9.1"

BUILD_INFO: MappingProxyType[str, str] = MappingProxyType(
    {
        "version": XNAT_VERSION,
        "buildNumber": "8",
        "buildDate": "Mon Jan 01 00:00:00 UTC 2024",
        "sha": "5696414138",
        "commit": "0",
        "tag": XNAT_VERSION,
        "branch": "master",
        "isDirty": "false",
    }
)

#: DICOM Modality -> (session xsi:type, scan xsi:type); anything else is "other DICOM".
_MODALITY_TYPES: MappingProxyType[str, tuple[str, str]] = MappingProxyType(
    {
        "MR": ("xnat:mrSessionData", "xnat:mrScanData"),
        "CT": ("xnat:ctSessionData", "xnat:ctScanData"),
        "PT": ("xnat:petSessionData", "xnat:petScanData"),
        "CR": ("xnat:crSessionData", "xnat:crScanData"),
    }
)
_OTHER_TYPES = ("xnat:otherDicomSessionData", "xnat:otherDicomScanData")

SESSION_TYPES: tuple[str, ...] = (*(t[0] for t in _MODALITY_TYPES.values()), _OTHER_TYPES[0])
SCAN_TYPES: tuple[str, ...] = (*(t[1] for t in _MODALITY_TYPES.values()), _OTHER_TYPES[1])
SCHEMA_NAMES: tuple[str, ...] = ("xnat", "xdat")


def session_type_for(modality: str) -> tuple[str, str]:
    """Return the (session, scan) xsi:types XNAT's importer uses for a DICOM Modality."""
    return _MODALITY_TYPES.get(modality.upper(), _OTHER_TYPES)


_NS = (
    'targetNamespace="http://nrg.wustl.edu/{ns}" xmlns:xnat="http://nrg.wustl.edu/xnat" '
    'xmlns:xdat="http://nrg.wustl.edu/xdat" xmlns:xs="http://www.w3.org/2001/XMLSchema" '
    'elementFormDefault="qualified" attributeFormDefault="unqualified"'
)

_RESOURCES = """<xs:element name="resources" minOccurs="0">
        <xs:complexType><xs:sequence>
          <xs:element name="resource" type="xnat:abstractResource"
                      minOccurs="0" maxOccurs="unbounded"/>
        </xs:sequence></xs:complexType>
      </xs:element>"""

_LABEL_ID = """<xs:annotation><xs:appinfo>
      <xdat:element displayIdentifiers="label"/>
    </xs:appinfo></xs:annotation>"""

_BODY = """  <xs:complexType name="projectData">
    <xs:sequence>
      <xs:element name="name" type="xs:string" minOccurs="0"/>
      <xs:element name="description" type="xs:string" minOccurs="0"/>
      RESOURCES
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="secondary_ID" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="subjectData">
    LABEL_ID
    <xs:sequence>
      RESOURCES
      <xs:element name="experiments" minOccurs="0">
        <xs:complexType><xs:sequence>
          <xs:element name="experiment" type="xnat:subjectAssessorData"
                      minOccurs="0" maxOccurs="unbounded"/>
        </xs:sequence></xs:complexType>
      </xs:element>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="project" type="xs:string"/>
    <xs:attribute name="label" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="experimentData">
    LABEL_ID
    <xs:sequence minOccurs="0">
      <xs:element name="date" type="xs:date" minOccurs="0"/>
      <xs:element name="time" type="xs:time" minOccurs="0"/>
      RESOURCES
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="project" type="xs:string"/>
    <xs:attribute name="label" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="subjectAssessorData"><xs:complexContent>
    <xs:extension base="xnat:experimentData">
      <xs:sequence><xs:element name="subject_ID" type="xs:string"/></xs:sequence>
    </xs:extension>
  </xs:complexContent></xs:complexType>
  <xs:complexType name="imageSessionData"><xs:complexContent>
    <xs:extension base="xnat:subjectAssessorData">
      <xs:sequence>
        <xs:element name="scans" minOccurs="0">
          <xs:complexType><xs:sequence>
            <xs:element name="scan" type="xnat:imageScanData"
                        minOccurs="0" maxOccurs="unbounded"/>
          </xs:sequence></xs:complexType>
        </xs:element>
        <xs:element name="dcmAccessionNumber" type="xs:string" minOccurs="0"/>
        <xs:element name="dcmPatientId" type="xs:string" minOccurs="0"/>
        <xs:element name="dcmPatientName" type="xs:string" minOccurs="0"/>
      </xs:sequence>
      <xs:attribute name="modality" type="xs:string"/>
      <xs:attribute name="UID" type="xs:string"/>
    </xs:extension>
  </xs:complexContent></xs:complexType>
  <xs:complexType name="imageScanData">
    <xs:annotation><xs:appinfo>
      <xdat:element displayIdentifiers="ID"/>
    </xs:appinfo></xs:annotation>
    <xs:sequence>
      <xs:element name="image_session_ID" type="xs:string" minOccurs="0"/>
      <xs:element name="series_description" type="xs:string" minOccurs="0"/>
      <xs:element name="file" type="xnat:abstractResource" minOccurs="0" maxOccurs="unbounded"/>
    </xs:sequence>
    <xs:attribute name="ID" type="xs:string" use="required"/>
    <xs:attribute name="type" type="xs:string"/>
    <xs:attribute name="UID" type="xs:string"/>
    <xs:attribute name="modality" type="xs:string"/>
  </xs:complexType>
  <xs:complexType name="abstractResource">
    <xs:annotation><xs:appinfo>
      <xdat:element abstract="true" displayIdentifiers="label"/>
    </xs:appinfo></xs:annotation>
    <xs:attribute name="label" type="xs:string"/>
    <xs:attribute name="file_count" type="xs:integer"/>
    <xs:attribute name="file_size" type="xs:long"/>
  </xs:complexType>
  <xs:complexType name="resource"><xs:complexContent>
    <xs:extension base="xnat:abstractResource">
      <xs:attribute name="URI" type="xs:string"/>
      <xs:attribute name="format" type="xs:string"/>
      <xs:attribute name="content" type="xs:string"/>
    </xs:extension>
  </xs:complexContent></xs:complexType>
  <xs:complexType name="resourceCatalog"><xs:complexContent>
    <xs:extension base="xnat:resource"/>
  </xs:complexContent></xs:complexType>
"""


def _extension(xsi_type: str, base: str) -> str:
    name = xsi_type.split(":", 1)[1]
    return (
        f'  <xs:complexType name="{name}"><xs:complexContent>'
        f'<xs:extension base="{base}"/></xs:complexContent></xs:complexType>\n'
    )


def _element(xsi_type: str) -> str:
    name = xsi_type.split(":", 1)[1]
    return f'  <xs:element name="{name[0].upper()}{name[1:]}" type="{xsi_type}"/>\n'


def _xnat_schema() -> str:
    types = ("xnat:projectData", "xnat:subjectData", *SESSION_TYPES, *SCAN_TYPES)
    parts = ['<?xml version="1.0" encoding="UTF-8"?>\n', f"<xs:schema {_NS.format(ns='xnat')}>\n"]
    parts += [_element(t) for t in (*types, "xnat:resourceCatalog")]
    parts.append(_BODY.replace("RESOURCES", _RESOURCES).replace("LABEL_ID", _LABEL_ID))
    parts += [_extension(t, "xnat:imageSessionData") for t in SESSION_TYPES]
    parts += [_extension(t, "xnat:imageScanData") for t in SCAN_TYPES]
    parts.append("</xs:schema>\n")
    return "".join(parts)


_SCHEMAS: MappingProxyType[str, str] = MappingProxyType(
    {
        "xnat": _xnat_schema(),
        "xdat": f'<?xml version="1.0" encoding="UTF-8"?>\n<xs:schema {_NS.format(ns="xdat")}/>\n',
    }
)


def schema_text(name: str) -> str | None:
    """Return the XSD served at ``/xapi/schemas/<name>``, or None for an unknown name."""
    return _SCHEMAS.get(name)


_SEARCH_FIELDS: MappingProxyType[str, tuple[str, ...]] = MappingProxyType(
    {
        "xnat:projectData": ("NAME", "DESCRIPTION", "SECONDARY_ID"),
        "xnat:subjectData": ("LABEL", "PROJECT", "INSERT_DATE"),
    }
)
_SESSION_FIELDS = ("LABEL", "DATE", "SUBJECT_LABEL", "PROJECT", "INSERT_DATE", "MODALITY")


def search_fields(xsi_type: str) -> tuple[str, ...] | None:
    """Return the FIELD_IDs listed for a search element, or None if it is not one."""
    if xsi_type in SESSION_TYPES:
        return _SESSION_FIELDS
    return _SEARCH_FIELDS.get(xsi_type)
