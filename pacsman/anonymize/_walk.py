"""The dataset walk: apply the resolved profile to every element at every depth.

Elements whose action leaves them untouched stay raw (undecoded), so pixel data and other
bulk values are copied through byte for byte.  Values of the ASCII-only VRs (UIDs, dates,
codes, numbers as text) are changed in their raw bytes, without pydicom decoding them;
text that may use the file's character set is decoded by pydicom.

Defaults for attributes the table does not list (by VR): sequences are walked; UIDs are
remapped unless well-known; DA/DT follow the date option; free text (:data:`FREE_TEXT_VRS`)
and unknown (UN) elements are removed; everything else (codes, numbers, TM, AS capped) is
kept and left to the leak check.

What to do with a tag (the *plan*) depends only on the profile, the tag and the VR the file
gives it, so plans are worked out once per engine and reused for every file.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.sequence import Sequence

from pacsman.anonymize._profile_rules import effective_vr
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
from pacsman.anonymize.profile import Action, DateMode, Option, Profile, Rule
from pacsman.anonymize.uids import CLASS_UID_KEYWORDS, is_constant_uid

__all__ = ["FREE_TEXT_VRS", "Plan", "Walk"]

#: VRs treated as free text: removed when the table does not list the attribute.
FREE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC", "PN"})
_TEXT_VRS = frozenset(["AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"])
_NUMBER_VRS = frozenset(["DS", "IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"])
DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D", "DS": "0"}
_DUMMY |= {"IS": "0", "UR": DUMMY_TEXT, "CS": DUMMY_TEXT}
_DUMMY_BYTES = b"\0\0"  # D on binary data: non-zero length, even, no content
_OVERLAY_DATA = 0x60003000

Handler = Callable[["Walk", Dataset, Element, str, "Rule | None"], None]


@dataclass(frozen=True)
class Plan:
    """What to do with one (tag, VR): the handler (``None``: nothing), the VR, the rule."""

    handler: Handler | None
    vr: str
    rule: Rule | None


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

    def dataset(self, ds: Dataset) -> None:
        """De-identify ``ds`` in place (private blocks first, then public elements)."""
        outer = self.encodings
        self.encodings = encodings_of(ds, outer)  # an item may have its own character set
        self._private(ds)
        self._public(ds)
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
        if vr in ("DA", "DT"):
            return {
                DateMode.SHIFT: Action.CLEAN,
                DateMode.KEEP: Action.KEEP,
                DateMode.REMOVE: Action.REMOVE,
            }[self.profile.date_mode]
        if vr in FREE_TEXT_VRS or vr == "UN":
            return Action.REMOVE
        return Action.KEEP

    # -- actions ---------------------------------------------------------------------

    def _keep(self, ds: Dataset, element: Element, vr: str, rule: Rule | None) -> None:
        if vr == "SQ":
            self._items(ds, element.tag)
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
        if vr in ("SQ", "UI"):
            self._remap(ds, element, vr, rule)  # walk the items / remap: never the original
        elif vr in _TEXT_VRS or vr in _DUMMY:
            put(ds, element, vr, [_DUMMY.get(vr, DUMMY_TEXT)])
        elif vr in _NUMBER_VRS:
            ds[element.tag].value = 0
        else:
            ds[element.tag].value = _DUMMY_BYTES

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
            scrub = self.originals.scrub
            put(ds, element, vr, [scrub(v) for v in element_texts(element, vr, self.encodings)])
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

    def _items(self, ds: Dataset, tag: int) -> None:
        for item in ds[tag].value or []:
            self.dataset(item)

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
                if ds[tag].VR == "SQ":
                    self._items(ds, tag)
            else:
                del ds[tag]  # not allow-listed, or orphan (no private creator)
        for tag in private:
            if tag & 0xFFFF < 0x1000 and (tag >> 16, tag & 0xFFFF) not in kept_blocks:
                del ds[tag]


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
