"""Which SOP classes dcm2niix can turn into NIfTI: decided before it is ever called.

dcm2niix converts images.  Instances that hold no image grid -- structured reports, key
object selections, presentation states, encapsulated documents, raw data, waveforms, RT
structure sets and plans -- and secondary captures (screenshots: no geometry) are skipped
with a reason naming the SOP class (pydicom's name for the UID), never failed.
"""

from __future__ import annotations

from pydicom.uid import UID

__all__ = ["convertible"]

_STORAGE = "1.2.840.10008.5.1.4.1.1."

#: (UID prefix under 1.2.840.10008.5.1.4.1.1., what it is): a prefix ending in "." covers
#: the whole family, one without it that one class only.
_NOT_IMAGES: tuple[tuple[str, str], ...] = (
    ("88.59", "a key object selection"),  # before 88.: it is in the SR family's number range
    ("88.", "a structured report"),
    ("11.", "a presentation state"),
    ("7", "a secondary capture"),  # 1.2.840.10008.5.1.4.1.1.7
    ("7.", "a secondary capture"),  # .7.1-.7.4: the multi-frame secondary captures
    ("104.", "an encapsulated document"),  # PDF, CDA, STL, OBJ, MTL
    ("66", "raw data"),
    ("66.1", "a spatial registration"),
    ("66.2", "a spatial fiducials object"),
    ("66.3", "a deformable spatial registration"),
    ("66.5", "a surface segmentation"),
    ("66.6", "a tractography result"),
    ("9.", "a waveform"),
    ("481.3", "an RT structure set"),
    ("481.4", "an RT treatment record"),
    ("481.5", "an RT plan"),
    ("481.6", "an RT treatment record"),
    ("481.7", "an RT treatment record"),
    ("481.8", "an RT ion plan"),
    ("481.9", "an RT treatment record"),
    ("78.", "a measurement report"),  # lensometry ... spectacle prescription
    ("79.", "a measurement report"),  # macular grid thickness and volume
)


def _kind(sop_class_uid: str) -> str | None:
    if not sop_class_uid.startswith(_STORAGE):
        return None
    rest = sop_class_uid[len(_STORAGE) :]
    for prefix, kind in _NOT_IMAGES:
        if rest == prefix or (prefix.endswith(".") and rest.startswith(prefix)):
            return kind
    return None


def convertible(sop_class_uid: str) -> str | None:
    """``None`` if dcm2niix may convert instances of ``sop_class_uid``; else the reason
    they are skipped, naming the SOP class:
    ``"SOP class Basic Text SR Storage (1.2.840.10008.5.1.4.1.1.88.11) is a structured
    report; dcm2niix converts images only"``.
    """
    uid = sop_class_uid.strip().rstrip("\x00")
    kind = _kind(uid)
    if kind is None:
        return None
    name = UID(uid).name
    label = f"{name} ({uid})" if name != uid else uid
    return f"SOP class {label} is {kind}; dcm2niix converts images only"
