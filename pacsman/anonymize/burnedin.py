"""Burned-in risk: images that may show identifying text in their pixels.

pacsman never reads or alters pixel data, so such images are quarantined unless the
profile accepts them (``burned_in.accept``, by modality; ``SC`` for secondary capture):

* ultrasound (Modality US/IVUS or an ultrasound SOP class) and secondary capture
  (an SC SOP class), whatever BurnedInAnnotation says;
* any image with BurnedInAnnotation = YES, or RecognizableVisualFeatures = YES;
* any image without BurnedInAnnotation in a modality at risk (:data:`AT_RISK_MODALITIES`:
  projection, endoscopy, photography and scanned modalities, where text is commonly burned
  in; a missing Modality counts as OT).  CT, MR, PT, NM and the like are not at risk by default.
"""

from __future__ import annotations

from collections.abc import Set

from pydicom import Dataset

from pacsman.anonymize._values import peek

__all__ = ["AT_RISK_MODALITIES", "burned_in_risk"]

_SOP = "1.2.840.10008.5.1.4.1.1."
_US_CLASSES = frozenset(_SOP + s for s in ("3", "3.1", "6", "6.1", "6.2", "6.3"))
_SC_CLASSES = frozenset(_SOP + s for s in ("7", "7.1", "7.2", "7.3", "7.4"))
AT_RISK_MODALITIES = frozenset(
    {"US", "IVUS", "XA", "RF", "ES", "XC", "SC", "OT", "CR", "DX", "MG", "IO", "PX", "GM"}
    | {"SM", "DOC", "OP", "OPT", "BDUS", "EPS"}
)
_PIXELS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def _text(ds: Dataset, keyword: str) -> str:
    return "\\".join(peek(ds, keyword, [])).upper()


def _kind(ds: Dataset) -> str:
    modality = _text(ds, "Modality")
    sop_class = _text(ds, "SOPClassUID")
    if sop_class in _SC_CLASSES:
        return "SC"
    if sop_class in _US_CLASSES or modality == "IVUS":
        return "US"
    return modality or "OT"  # no Modality: treat as "other", which is at risk


def burned_in_risk(ds: Dataset, accept: Set[str]) -> str | None:
    """Why ``ds`` must be quarantined for burned-in risk, or ``None`` when it need not be."""
    if not any(keyword in ds for keyword in _PIXELS):
        return None
    kind = _kind(ds)
    flag = _text(ds, "BurnedInAnnotation")
    if kind in ("US", "SC"):
        reason = f"{'ultrasound' if kind == 'US' else 'secondary capture'} image"
    elif flag == "YES":
        reason = "BurnedInAnnotation is YES"
    elif not flag and kind in AT_RISK_MODALITIES:
        reason = f"BurnedInAnnotation is absent in modality '{kind}'"
    elif _text(ds, "RecognizableVisualFeatures") == "YES":
        reason = "RecognizableVisualFeatures is YES"
    else:
        return None
    if kind in accept:
        return None
    fix = f"review the pixels, then accept with burned_in.accept: [{kind}]"
    return f"burned-in risk: {reason}; {fix}"
