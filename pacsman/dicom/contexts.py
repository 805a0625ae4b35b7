"""The storage presentation contexts a C-GET requestor proposes: what a retrieve needs, in 128.

In a C-GET the PACS sends each instance back as a C-STORE on the requestor's own association,
so the requestor must have proposed a context for the instance's SOP class (with the SCP role)
*and* for the transfer syntax the PACS will send it in.  A PACS that does not transcode sends
an instance only in the syntax it holds it in.  One context per class carrying every syntax
gets exactly one syntax accepted (the acceptor picks it), so a JPEG-LS series then fails with
0xA702 and nothing received; and 170 storage classes do not fit in the 128 contexts that PS3.8
allows one association.  So:

* each (SOP class, transfer syntax) gets a context of its own (:func:`contexts_for`): the
  syntaxes the PACS says it holds (image-level C-FIND), or, where it does not say, Explicit
  and Implicit VR Little Endian, Deflated, and for image classes the common compressed
  syntaxes (JPEG baseline/extended/lossless, JPEG-LS, JPEG 2000, RLE);
* a :class:`StoragePlan` is what one association proposes, at most ``room`` contexts;
* :func:`plans_for` covers what a retrieve needs in as few associations as it takes;
  :func:`ladder` covers every storage class pacsman knows, most common first, for a PACS
  that does not say which classes a series holds.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pydicom.uid import (
    JPEG2000,
    UID,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import build_role, evt
from pynetdicom.association import Association
from pynetdicom.presentation import PresentationContext

from pacsman.dicom.hooks import cheaply_copied_context

__all__ = [
    "COMMON_COMPRESSED",
    "DEFLATED",
    "FIRST_RUNG_CLASSES",
    "TRANSFER_SYNTAXES",
    "UNCOMPRESSED",
    "StorageContext",
    "StoragePlan",
    "StorageRole",
    "accepted_storage",
    "contexts_for",
    "is_image_class",
    "ladder",
    "plans_for",
]

EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
#: Proposed for every class: a PACS can send any uncompressed instance in one of these.
UNCOMPRESSED = (EXPLICIT_VR_LITTLE_ENDIAN, IMPLICIT_VR_LITTLE_ENDIAN)
#: Deflated Explicit VR Little Endian: whole-dataset compression, any class (PS3.5 A.5).
DEFLATED = "1.2.840.10008.1.2.1.99"
#: Accepted as proposed and stored as they arrive, never transcoded (PS3.5 A and PS3.6 A).
TRANSFER_SYNTAXES: tuple[str, ...] = (
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1.98",  # Encapsulated Uncompressed Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent by old modalities)
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",  # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless, Non-Hierarchical (Process 14)
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless, First-Order Prediction (Process 14 SV1)
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.92",  # JPEG 2000 Part 2 Multi-component (Lossless Only)
    "1.2.840.10008.1.2.4.93",  # JPEG 2000 Part 2 Multi-component
    "1.2.840.10008.1.2.4.201",  # High-Throughput JPEG 2000 (Lossless Only)
    "1.2.840.10008.1.2.4.202",  # High-Throughput JPEG 2000 with RPCL Options (Lossless)
    "1.2.840.10008.1.2.4.203",  # High-Throughput JPEG 2000
    "1.2.840.10008.1.2.4.110",  # JPEG XL Lossless
    "1.2.840.10008.1.2.4.111",  # JPEG XL JPEG Recompression
    "1.2.840.10008.1.2.4.112",  # JPEG XL
    "1.2.840.10008.1.2.5",  # RLE Lossless
    "1.2.840.10008.1.2.8.1",  # Deflated Image Frame Compression
    "1.2.840.10008.1.2.4.100",  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.101",  # MPEG2 Main Profile / High Level
    "1.2.840.10008.1.2.4.102",  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.103",  # MPEG-4 AVC/H.264 BD-compatible High Profile / Level 4.1
    "1.2.840.10008.1.2.4.104",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 2D Video
    "1.2.840.10008.1.2.4.105",  # MPEG-4 AVC/H.264 High Profile / Level 4.2 For 3D Video
    "1.2.840.10008.1.2.4.106",  # MPEG-4 AVC/H.264 Stereo High Profile / Level 4.2
    "1.2.840.10008.1.2.4.107",  # HEVC/H.265 Main Profile / Level 5.1
    "1.2.840.10008.1.2.4.108",  # HEVC/H.265 Main 10 Profile / Level 5.1
)

#: Proposed, one context each, for image classes whose syntax the PACS does not tell.
COMMON_COMPRESSED: tuple[str, ...] = (
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
)

#: Classes with pixel data whose pydicom name does not say "Image".
_PIXEL_CLASSES = frozenset(
    {
        "1.2.840.10008.5.1.4.1.1.30",  # Parametric Map
        "1.2.840.10008.5.1.4.1.1.481.2",  # RT Dose
        "1.2.840.10008.5.1.4.1.1.66.4",  # Segmentation
        "1.2.840.10008.5.1.4.1.1.6.2",  # Enhanced US Volume
        "1.2.840.10008.5.1.4.1.1.77.1.5.8",  # Ophthalmic OCT B-scan Volume Analysis
        "1.2.840.10008.5.1.4.1.1.81.1",  # Ophthalmic Thickness Map
        "1.2.840.10008.5.1.4.1.1.82.1",  # Corneal Topography Map
    }
)

#: The first association for a PACS that does not say what a series holds: the commonest
#: image classes with every common syntax, and the reports, key objects, presentation states
#: and ECGs that come with them (8 x 12 + 10 x 3 = 126 contexts).
FIRST_RUNG_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image
    "1.2.840.10008.5.1.4.1.1.4",  # MR Image
    "1.2.840.10008.5.1.4.1.1.1",  # Computed Radiography Image
    "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.6.1",  # Ultrasound Image
    "1.2.840.10008.5.1.4.1.1.3.1",  # Ultrasound Multi-frame Image
    "1.2.840.10008.5.1.4.1.1.7",  # Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.128",  # Positron Emission Tomography Image
    "1.2.840.10008.5.1.4.1.1.88.67",  # X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.88.11",  # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",  # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",  # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.59",  # Key Object Selection Document
    "1.2.840.10008.5.1.4.1.1.88.76",  # Enhanced X-Ray Radiation Dose SR
    "1.2.840.10008.5.1.4.1.1.11.1",  # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.9.1.1",  # 12-lead ECG Waveform
    "1.2.840.10008.5.1.4.1.1.9.1.2",  # General ECG Waveform
)


#: Then the next commonest image classes, then every other SR, key-object and waveform class.
_NEXT_IMAGE_CLASSES = (
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image
    "1.2.840.10008.5.1.4.1.1.4.1",  # Enhanced MR Image
    "1.2.840.10008.5.1.4.1.1.1.2",  # Digital Mammography X-Ray Image - For Presentation
    "1.2.840.10008.5.1.4.1.1.12.1",  # X-Ray Angiographic Image
    "1.2.840.10008.5.1.4.1.1.12.2",  # X-Ray Radiofluoroscopic Image
    "1.2.840.10008.5.1.4.1.1.20",  # Nuclear Medicine Image
    "1.2.840.10008.5.1.4.1.1.13.1.3",  # Breast Tomosynthesis Image
    "1.2.840.10008.5.1.4.1.1.7.4",  # Multi-frame True Color Secondary Capture Image
    "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image - For Processing
    "1.2.840.10008.5.1.4.1.1.481.1",  # RT Image
)
_DOCUMENT_FAMILIES = ("1.2.840.10008.5.1.4.1.1.88.", "1.2.840.10008.5.1.4.1.1.9.")


@dataclass(frozen=True, order=True)
class StorageContext:
    """One proposed presentation context: a storage SOP class in one transfer syntax."""

    sop_class_uid: str
    transfer_syntax_uid: str


@dataclass(frozen=True)
class StoragePlan:
    """The storage contexts one association proposes (each with the SCP role)."""

    contexts: tuple[StorageContext, ...]

    @property
    def sop_classes(self) -> tuple[str, ...]:
        """The SOP classes proposed, in order, once each."""
        return tuple(dict.fromkeys(c.sop_class_uid for c in self.contexts))

    def covers(self, needs: Mapping[str, Collection[str]], *, syntaxes: Collection[str]) -> bool:
        """Whether every context ``needs`` calls for (:func:`contexts_for`) is proposed."""
        proposed = set(self.contexts)
        return all(
            proposed.issuperset(contexts_for(uid, known, syntaxes=syntaxes))
            for uid, known in needs.items()
        )


def is_image_class(sop_class_uid: str) -> bool:
    """Whether instances of this SOP class carry pixel data (so may be stored compressed)."""
    return sop_class_uid in _PIXEL_CLASSES or "Image" in UID(sop_class_uid).name


def contexts_for(
    sop_class_uid: str,
    known: Collection[str],
    *,
    syntaxes: Collection[str],
    every_syntax: bool = False,
) -> tuple[StorageContext, ...]:
    """The contexts that receive any instance of ``sop_class_uid`` in the syntaxes ``known``.

    ``known`` holds the syntaxes the PACS says it holds the instances in; empty means it did
    not say.  Only ``syntaxes`` (what the receiver accepts) are ever proposed, and with
    ``every_syntax`` all of them (for instances that came in none of the usual ones).
    """
    wanted = [*UNCOMPRESSED, *known]
    if every_syntax:
        wanted += syntaxes
    elif not known:
        wanted += [*(COMMON_COMPRESSED if is_image_class(sop_class_uid) else ()), DEFLATED]
    return tuple(
        StorageContext(sop_class_uid, uid) for uid in dict.fromkeys(wanted) if uid in syntaxes
    )


def plans_for(
    needs: Mapping[str, Collection[str]],
    *,
    syntaxes: Collection[str],
    room: int,
    every_syntax: bool = False,
    filler: Sequence[str] = FIRST_RUNG_CLASSES,
) -> list[StoragePlan]:
    """As few plans as cover ``needs`` (SOP class -> syntaxes held), each within ``room``.

    A class's contexts never straddle two plans.  The first plan is topped up with the
    ``filler`` classes that fit whole, so that the next series usually needs no new
    association.  ``every_syntax``: each class in every one of ``syntaxes``, no filler.

    Raises:
        ValueError: if one class alone needs more than ``room`` contexts.
    """
    blocks = (
        contexts_for(uid, known, syntaxes=syntaxes, every_syntax=every_syntax)
        for uid, known in needs.items()
    )
    groups = _pack(blocks, room)
    if not groups or every_syntax:
        return [StoragePlan(tuple(group)) for group in groups]
    top_up = (contexts_for(uid, (), syntaxes=syntaxes) for uid in filler if uid not in needs)
    first = _pack([tuple(groups[0]), *top_up], room, whole_first=True)[0]
    return [StoragePlan(tuple(first)), *(StoragePlan(tuple(g)) for g in groups[1:])]


def ladder(
    sop_classes: Sequence[str], *, syntaxes: Collection[str], room: int
) -> list[StoragePlan]:
    """Plans that between them receive any instance of ``sop_classes`` in any common syntax.

    The classes of :data:`FIRST_RUNG_CLASSES` come first, so the first plan is the one most
    series need; then the next commonest image classes, then every other SR, key-object and
    waveform class, then the rest.
    """
    return list(_ladder(tuple(sop_classes), tuple(syntaxes), room))


@functools.lru_cache(maxsize=8)
def _ladder(
    sop_classes: tuple[str, ...], syntaxes: tuple[str, ...], room: int
) -> tuple[StoragePlan, ...]:
    first = [uid for uid in (*FIRST_RUNG_CLASSES, *_NEXT_IMAGE_CLASSES) if uid in sop_classes]
    documents = [uid for uid in sop_classes if uid.startswith(_DOCUMENT_FAMILIES)]
    ordered = dict.fromkeys([*first, *documents, *sop_classes])
    blocks = (contexts_for(uid, (), syntaxes=syntaxes) for uid in ordered)
    return tuple(StoragePlan(tuple(group)) for group in _pack(blocks, room))


def _pack(
    blocks: Iterable[tuple[StorageContext, ...]], room: int, *, whole_first: bool = False
) -> list[list[StorageContext]]:
    """Fill plans in order with whole blocks, each plan at most ``room`` contexts.

    ``whole_first``: one plan only; the first block must fit, later blocks that do not fit
    are left out.
    """
    groups: list[list[StorageContext]] = []
    for block in blocks:
        if not block:
            continue
        if len(block) > room:
            raise ValueError(
                f"SOP class {block[0].sop_class_uid} needs {len(block)} contexts, room {room}"
            )
        if groups and len(groups[-1]) + len(block) <= room:
            groups[-1].extend(block)
        elif not groups or not whole_first:
            groups.append(list(block))
    return groups


@dataclass(frozen=True)
class StorageRole:
    """What a C-GET requestor must offer to receive its sub-operations on the same association.

    ``sop_classes`` and ``transfer_syntaxes`` are what the receiver takes; each association
    proposes a :class:`~pacsman.dicom.contexts.StoragePlan` drawn from them (one context per
    class and syntax, at most 128 in all), the first rung of :meth:`ladder` unless told.
    """

    sop_classes: Sequence[str]
    transfer_syntaxes: Sequence[str]
    handle_store: Callable[[evt.Event], int]
    #: Called once the association is up, before the first C-GET (e.g. the SCP's fast path).
    on_established: Callable[[Association], None] | None = None

    def ladder(self, *, room: int) -> list[StoragePlan]:
        """Plans that between them receive every class in every common syntax."""
        return ladder(self.sop_classes, syntaxes=self.transfer_syntaxes, room=room)

    def plans_for(
        self, needs: Mapping[str, Collection[str]], *, room: int, every_syntax: bool = False
    ) -> list[StoragePlan]:
        """As few plans as receive ``needs`` (SOP class -> syntaxes the PACS holds it in);
        ``every_syntax``: in every syntax the receiver takes, one context each."""
        return plans_for(
            needs, syntaxes=self.transfer_syntaxes, room=room, every_syntax=every_syntax
        )

    def propose(self, plan: StoragePlan) -> tuple[list[PresentationContext], list[Any]]:
        """``plan``'s presentation contexts, and the SCP role items (one per class)."""
        roles = [build_role(uid, scp_role=True) for uid in plan.sop_classes]
        return list(_storage_contexts(plan)), roles


@functools.lru_cache(maxsize=32)
def _storage_contexts(plan: StoragePlan) -> tuple[PresentationContext, ...]:
    """Built once per plan, and cheap for pynetdicom to copy for each association (126
    contexts cost ~0.3 s of CPU per association otherwise)."""
    return tuple(
        cheaply_copied_context(c.sop_class_uid, [c.transfer_syntax_uid]) for c in plan.contexts
    )


def accepted_storage(assoc: Association) -> frozenset[StorageContext]:
    """The (SOP class, transfer syntax) pairs the PACS accepted on ``assoc``."""
    return frozenset(
        StorageContext(str(cx.abstract_syntax), str(cx.transfer_syntax[0]))
        for cx in assoc.accepted_contexts
        if cx.transfer_syntax
    )
