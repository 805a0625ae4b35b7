"""The dataset walk: apply the resolved profile to every element at every depth.

Elements whose action leaves them untouched stay raw (undecoded), so pixel data and other
bulk values are copied through byte for byte.  Values of the ASCII-only VRs (UIDs, dates,
codes, numbers as text) are changed in their raw bytes, without pydicom decoding them;
text that may use the file's character set is decoded by pydicom.

Defaults for attributes the table does not list, and pacsman's own rows do not name (the
keep-list, the Type 1/2 attributes): sequences are walked; UIDs are remapped unless
well-known; text, date and time VRs (:data:`REMOVED_VRS`) and unknown (UN) elements are
removed; everything else (codes as CS, numbers, AS capped, binary) is kept and left to
the leak check.

Item by item: code items (:mod:`._codes`) keep standard codes and get dummy local ones;
SR content items (:mod:`._sr`) follow the rule of the attribute their concept stands for.

What to do with a tag (the *plan*) depends only on the profile, the tag and the VR the file
gives it, so plans are worked out once per engine and reused for every file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.sequence import Sequence

from pacsman.anonymize import _codes, _sr
from pacsman.anonymize._leakmatch import Matcher
from pacsman.anonymize._profile_rules import effective_vr
from pacsman.anonymize._scrub import Scrubber
from pacsman.anonymize._values import (
    Element,
    ascii_texts,
    element_texts,
    encodings_of,
    put,
    raw_of,
)
from pacsman.anonymize.dates import cap_age, shift_da, shift_dt
from pacsman.anonymize.leakcheck import Originals
from pacsman.anonymize.profile import Action, DateMode, Option, Profile, Rule, type1_tags
from pacsman.anonymize.uids import CLASS_UID_KEYWORDS, is_constant_uid

__all__ = ["DUMMY_TEXT", "REMOVED_VRS", "Plan", "Walk", "scrubber_for"]

#: VRs removed when neither the table nor pacsman's rows list the attribute.
REMOVED_VRS = frozenset({"DA", "DT", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UR", "UT"})
_TEXT_VRS = frozenset(["AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"])
_NUMBER_VRS = frozenset(["DS", "IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"])
DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D", "DS": "0"}
_DUMMY |= {"IS": "0", "UR": DUMMY_TEXT, "CS": DUMMY_TEXT}
_LABEL_JOINS = re.compile(r" *_[ _]*")  # what is left around a cut in a label
_DUMMY_BYTES = b"\0\0"  # D on binary data: non-zero length, even, no content
_OVERLAY_DATA = 0x60003000
_ENCAPSULATED_DOCUMENT, _DOCUMENT_LENGTH = 0x00420011, 0x00420015
_ITEM_TAG = b"\xfe\xff\x00\xe0"
_UNDEFINED = 0xFFFFFFFF

Handler = Callable[["Walk", Dataset, Element, str, "Rule | None"], None]


@dataclass(frozen=True)
class Plan:
    """What to do with one (tag, VR): the handler (``None``: nothing), the VR, the rule."""

    handler: Handler | None
    vr: str
    rule: Rule | None


def scrubber_for(originals: Originals) -> Scrubber:
    """The scrubber for one patient's originals (a study's files share it)."""
    return _scrubber(
        originals.name_parts,
        originals.ids | frozenset(d for d in originals.dates if not d.isdigit()),
        frozenset(d for d in originals.dates if d.isdigit()),
        originals.institutions | originals.addresses,
        originals.patient_matcher,
    )


@lru_cache(maxsize=64)
def _scrubber(
    names: frozenset[str],
    ids: frozenset[str],
    dates: frozenset[str],
    places: frozenset[str],
    guard: Matcher,
) -> Scrubber:
    return Scrubber(names, ids, dates, places, guard=guard)


@dataclass
class Walk:
    """One instance's walk: the profile, the keyed functions and what was remapped."""

    profile: Profile
    remap: Callable[[str], str]
    shift_days: int
    originals: Originals
    plans: dict[tuple[int, str | None], Plan] = field(default_factory=dict)
    remapped: set[str] = field(default_factory=set)
    encodings: list[str] = field(default_factory=lambda: ["iso8859"])
    keep_encapsulated: bool = False
    _keep_codes: bool = False

    @property
    def scrub(self) -> Scrubber:
        """The scrubber of this instance's patient."""
        return scrubber_for(self.originals)

    def dataset(self, ds: Dataset) -> None:
        """De-identify ``ds`` in place (private blocks first, then codes, then the rest)."""
        outer = self.encodings
        self.encodings = encodings_of(ds, outer)  # an item may have its own character set
        keep_codes, self._keep_codes = self._keep_codes, False
        self._private(ds)
        keys = ds.keys()
        if _codes.is_code_item(ds):
            _codes.clean_code_item(ds, self.scrub, self.encodings, keep=keep_codes)
        elif _codes.SCHEME in keys:
            if not keep_codes:
                _codes.clean_scheme_item(ds, self.encodings)
        elif _codes.VERSION in keys:
            _codes.drop_stray_codes(ds)
        if _sr.is_content_item(ds):
            _sr.cap_age(ds)  # before the walk: it reads the concept's code
        self._public(ds)
        _drop_orphans(ds)
        self.encodings = outer

    def _public(self, ds: Dataset) -> None:
        plans = self.plans
        for tag, element in list(ds.items()):
            key = (int(tag), element.VR)  # plain ints: BaseTag compares in Python
            plan = plans.get(key) or plans.setdefault(key, self._plan(*key))
            if plan.handler is not None:
                plan.handler(self, ds, element, plan.vr, plan.rule)

    # -- plans -----------------------------------------------------------------------

    def _plan(self, tag: int, file_vr: str | None) -> Plan:
        group = tag >> 16
        vr = effective_vr(tag, file_vr)
        if group & 1:
            return Plan(None, vr, None)  # private: done by _private()
        if tag in _codes.CODE_TAGS:
            return Plan(None, vr, None)  # done by _codes, item by item
        if tag & 0xFFFF == 0 or group <= 0x0003:
            return Plan(Walk._remove, vr, None)  # group lengths (retired), command/meta groups
        if group & 0xFF01 == 0x6000 and self._overlay_removed():
            return Plan(Walk._remove, vr, None)  # an overlay without its data is invalid
        rule = self.profile.rule_for(tag)
        action = rule.action if rule is not None else self._default(vr, tag)
        if action is Action.KEEP and vr not in ("SQ", "AS"):
            return Plan(None, vr, rule)  # nothing to do
        return Plan(_HANDLERS[action], vr, rule)

    def _overlay_removed(self) -> bool:
        rule = self.profile.rules.get(_OVERLAY_DATA)
        return rule is None or rule.action in (Action.REMOVE, Action.CLEAN)

    def _default(self, vr: str, tag: int) -> Action:
        if vr == "UI":
            if Option.RETAIN_UIDS in self.profile.options:
                return Action.KEEP
            return Action.KEEP if keyword_for_tag(tag) in CLASS_UID_KEYWORDS else Action.REMAP
        if vr in REMOVED_VRS or vr == "UN":
            return Action.REMOVE
        return Action.KEEP

    # -- actions ---------------------------------------------------------------------

    def _keep(self, ds: Dataset, element: Element, vr: str, rule: Rule | None) -> None:
        if vr == "SQ":
            self._items(ds, element.tag, keep_codes=rule is not None)
        elif vr == "AS":
            put(ds, element, vr, [cap_age(v) for v in ascii_texts(ds, element, vr)])

    def _remove(self, ds: Dataset, element: Element, vr: str, rule: Rule | None) -> None:
        del ds[element.tag]

    def _empty(self, ds: Dataset, element: Element, vr: str, rule: Rule | None) -> None:
        tag = element.tag
        raw = raw_of(element, vr)
        if vr == "SQ":
            ds[tag] = DataElement(tag, "SQ", Sequence())
        elif raw is not None:
            ds[tag] = raw._replace(value=b"", length=0)
        else:
            ds[tag].value = None

    def _dummy(self, ds: Dataset, element: Element, vr: str, rule: Rule | None) -> None:
        if vr == "SQ" and _codes.is_code_sequence(element.tag):
            ds[element.tag] = _codes.dummy_code_sequence(element.tag)  # nothing kept
        elif vr in ("SQ", "UI"):
            self._remap(ds, element, vr, rule)  # walk the items / remap: never the original
        elif vr in _TEXT_VRS or vr in _DUMMY:
            put(ds, element, vr, [_DUMMY.get(vr, DUMMY_TEXT)])
        elif vr in _NUMBER_VRS:
            ds[element.tag].value = 0
        elif element.tag == _ENCAPSULATED_DOCUMENT and self.keep_encapsulated:
            return  # held in quarantine for review, whole (see engine)
        else:
            ds[element.tag].value = _DUMMY_BYTES
            if element.tag == _ENCAPSULATED_DOCUMENT and _DOCUMENT_LENGTH in ds:
                ds[_DOCUMENT_LENGTH] = DataElement(_DOCUMENT_LENGTH, "UL", len(_DUMMY_BYTES))

    def _remap(self, ds: Dataset, element: Element, vr: str, rule: Rule | None) -> None:
        if vr == "SQ":
            self._items(ds, element.tag)
        elif vr == "UI":
            put(ds, element, vr, [self._uid(uid) for uid in ascii_texts(ds, element, vr)])
        else:
            self._empty(ds, element, vr, rule)

    def _uid(self, uid: str) -> str:
        uid = uid.strip("\0 ")
        if not uid or is_constant_uid(uid):
            return uid
        self.remapped.add(uid)
        return self.remap(uid)

    def _clean(self, ds: Dataset, element: Element, vr: str, rule: Rule | None) -> None:
        if vr in ("SQ", "UI"):
            self._remap(ds, element, vr, rule)
        elif vr in ("DA", "DT"):
            self._dates(ds, element, vr)
        elif vr == "PN":
            put(ds, element, vr, [DUMMY_TEXT])  # a cleaned name is no name
        elif vr in _TEXT_VRS:
            scrub = self.scrub
            values = [scrub(v) for v in element_texts(element, vr, self.encodings)]
            if vr in ("CS", "SH"):  # labels: KOVALEVA_REVIEW -> REVIEW, not _REVIEW
                values = [_LABEL_JOINS.sub("_", v).strip("_ ") for v in values]
            if element.tag in type1_tags() and not any(values):
                values = [DUMMY_TEXT]  # Type 1: never empty
            put(ds, element, vr, values)
        elif vr not in _NUMBER_VRS and vr not in ("TM", "AS"):
            del ds[element.tag]  # binary content cannot be cleaned without reading it

    def _dates(self, ds: Dataset, element: Element, vr: str) -> None:
        mode = self.profile.date_mode
        if mode is DateMode.REMOVE:
            self._empty(ds, element, vr, None)
        elif mode is DateMode.SHIFT:
            shift = shift_da if vr == "DA" else shift_dt
            days = self.shift_days
            put(ds, element, vr, [shift(v, days) for v in ascii_texts(ds, element, vr)])

    def _replace(self, ds: Dataset, element: Element, vr: str, rule: Rule | None) -> None:
        value = rule.value if rule is not None else None
        put(ds, element, vr, [value] if value else [])

    def _items(self, ds: Dataset, tag: int, *, keep_codes: bool = False) -> None:
        sequence = ds[tag].value or []
        if sequence and _sr.is_content_item(sequence[0]):
            kept = [item for item in sequence if not _sr.drops(self.profile, item)]
            if len(kept) != len(sequence):
                if not kept:
                    del ds[tag]  # Type 1C: absent when there are no children
                    return
                ds[tag].value = Sequence(kept)
                sequence = ds[tag].value
        for item in sequence:
            self._keep_codes = keep_codes
            self.dataset(item)
        self._keep_codes = False

    # -- private elements ------------------------------------------------------------

    def _private(self, ds: Dataset) -> None:
        """Keep allow-listed private elements (with their creators); remove the rest."""
        private = [tag for tag in ds.keys() if tag >> 16 & 1]  # noqa: SIM118 (tags, not elements)
        if not private:
            return
        creators = {
            (tag >> 16, tag & 0xFFFF): _creator(ds.get_item(tag))
            for tag in private
            if 0x10 <= tag & 0xFFFF <= 0xFF
        }
        kept_blocks = set()
        for tag in private:
            group, element = tag >> 16, tag & 0xFFFF
            if element < 0x1000:
                continue
            creator = creators.get((group, element >> 8))
            if creator and self.profile.keeps_private(group, creator, element & 0xFF):
                kept_blocks.add((group, element >> 8))
                self._kept_private(ds, int(tag), creator)
            else:
                del ds[tag]  # not allow-listed, or orphan (no private creator)
        for tag in private:
            if tag & 0xFFFF < 0x1000 and (tag >> 16, tag & 0xFFFF) not in kept_blocks:
                del ds[tag]

    def _kept_private(self, ds: Dataset, tag: int, creator: str) -> None:
        """An allow-listed element: a sequence is walked, even one read as UN bytes."""
        element = ds.get_item(tag)
        if element is None:
            return
        if element.VR == "SQ":
            self._items(ds, tag)
            return
        if not isinstance(element, RawDataElement) or element.VR not in (None, "UN"):
            return
        known = _private_vr(tag, creator)
        value = element.value or b""
        if known == "SQ" or value[:4] == _ITEM_TAG or element.length == _UNDEFINED:
            self._private_sequence(ds, element)
        elif known not in (None, "UN"):
            ds[tag] = element._replace(VR=known)  # text is read as text (leak check too)

    def _private_sequence(self, ds: Dataset, raw: RawDataElement) -> None:
        """Parse UN bytes as an implicit VR little endian sequence and walk it, or remove."""
        tag = raw.tag
        explicit = raw.is_implicit_VR is False
        try:
            ds[tag] = raw._replace(VR="SQ", is_implicit_VR=True, is_little_endian=True)
            items = ds[tag].value
            if explicit:  # written in the file's explicit VR: decode every element
                for item in items:
                    for _ in item.iterall():
                        pass
        except Exception:
            if tag in ds:
                del ds[tag]
            return
        self._items(ds, tag)


#: Type 1C attributes that qualify another one (required only when it has a value), and
#: that one: ResponsiblePersonRole goes with ResponsiblePerson.
_QUALIFIERS = {0x00102298: 0x00102297}


def _drop_orphans(ds: Dataset) -> None:
    """Remove qualifiers whose attribute was removed or emptied (dciodvfy: "Type 1C
    present when condition unsatisfied")."""
    keys = ds.keys()
    for qualifier, qualified in _QUALIFIERS.items():
        if qualifier in keys and not _has_value(ds, qualified):
            del ds[qualifier]


def _has_value(ds: Dataset, tag: int) -> bool:
    element = ds.get_item(tag)
    value = element.value if element is not None else None
    if isinstance(value, bytes):
        return bool(value.strip(b"\0 "))
    return value not in (None, "", [])


def _private_vr(tag: int, creator: str) -> str | None:
    try:
        return str(private_dictionary_VR(tag, creator))
    except KeyError:
        return None


def _creator(raw: DataElement | RawDataElement | None) -> str:
    value = raw.value if raw is not None else None
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    return str(value or "").strip("\0 ")


_HANDLERS: dict[Action, Handler] = {
    Action.KEEP: Walk._keep,
    Action.REMOVE: Walk._remove,
    Action.EMPTY: Walk._empty,
    Action.DUMMY: Walk._dummy,
    Action.REMAP: Walk._remap,
    Action.CLEAN: Walk._clean,
    Action.REPLACE: Walk._replace,
}
