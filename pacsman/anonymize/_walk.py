"""The dataset walk: apply the resolved profile to every element at every depth.

Elements whose action leaves them untouched stay raw (undecoded), so pixel data and other
bulk values are copied through byte for byte.  Defaults for attributes the table does not
list (by VR): sequences are walked; UIDs are remapped unless well-known; DA/DT follow the
date option; free text (:data:`FREE_TEXT_VRS`) and unknown (UN) elements are removed;
everything else (codes, numbers, TM, AS capped) is kept and left to the leak check.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pydicom import Dataset
from pydicom.datadict import keyword_for_tag
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence

from pacsman.anonymize._profile_rules import vr_for
from pacsman.anonymize.dates import cap_age, shift_da, shift_dt
from pacsman.anonymize.leakcheck import Originals
from pacsman.anonymize.profile import Action, DateMode, Option, Profile, Rule
from pacsman.anonymize.uids import CLASS_UID_KEYWORDS, is_constant_uid

__all__ = ["FREE_TEXT_VRS", "Walk"]

#: VRs treated as free text: removed when the table does not list the attribute.
FREE_TEXT_VRS = frozenset({"LT", "ST", "UT", "UC", "PN"})
_TEXT_VRS = frozenset(["AE", "CS", "LO", "LT", "PN", "SH", "ST", "UC", "UT", "UR"])
_NUMBER_VRS = frozenset(["DS", "IS", "US", "SS", "UL", "SL", "UV", "SV", "FL", "FD", "AT"])
DUMMY_TEXT = "ANONYMIZED"
_DUMMY = {"DA": "19000101", "DT": "19000101000000", "TM": "000000", "AS": "000D", "DS": "0"}
_DUMMY |= {"IS": "0", "UR": DUMMY_TEXT, "CS": DUMMY_TEXT}
_DUMMY_BYTES = b"\0\0"  # D on binary data: non-zero length, even, no content
_OVERLAY_DATA = 0x60003000


def _values(element: DataElement) -> list[str]:
    value = element.value
    if value is None or value == "":
        return []
    if isinstance(value, MultiValue | list):
        return [str(v) for v in value]
    return [str(value)]


def _set(element: DataElement, values: list[str]) -> None:
    element.value = values if len(values) > 1 else (values[0] if values else None)


@dataclass
class Walk:
    """One instance's walk: the profile, the keyed functions and what was remapped."""

    profile: Profile
    remap: Callable[[str], str]
    shift_days: int
    originals: Originals
    remapped: set[str] = field(default_factory=set)

    def dataset(self, ds: Dataset) -> None:
        """De-identify ``ds`` in place (private blocks first, then public elements)."""
        self._private(ds)
        for tag in list(ds.keys()):
            if not tag >> 16 & 1:
                self._public(ds, tag)

    # -- public elements -------------------------------------------------------------

    def _public(self, ds: Dataset, tag: int) -> None:
        group = tag >> 16
        if tag & 0xFFFF == 0 or group <= 0x0003:
            del ds[tag]  # group lengths (retired) and command/meta groups in a data set
            return
        raw = ds.get_item(tag)
        vr = (raw.VR if raw is not None else None) or vr_for(tag)
        if vr == "UN":
            vr = vr_for(tag)  # pydicom re-reads UN with the dictionary VR when it knows it
        if group & 0xFF01 == 0x6000 and self._overlay_removed():
            del ds[tag]  # an overlay without its data would be an invalid Overlay Plane
            return
        rule = self.profile.rule_for(tag)
        action = rule.action if rule is not None else self._default(vr, tag)
        _HANDLERS[action](self, ds, tag, vr, rule)

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

    def _keep(self, ds: Dataset, tag: int, vr: str, rule: Rule | None) -> None:
        if vr == "SQ":
            self._items(ds, tag)
        elif vr == "AS":
            element = ds[tag]
            _set(element, [cap_age(v) for v in _values(element)])

    def _remove(self, ds: Dataset, tag: int, vr: str, rule: Rule | None) -> None:
        del ds[tag]

    def _empty(self, ds: Dataset, tag: int, vr: str, rule: Rule | None) -> None:
        if vr == "SQ":
            ds[tag] = DataElement(tag, "SQ", Sequence())
        else:
            ds[tag].value = None

    def _dummy(self, ds: Dataset, tag: int, vr: str, rule: Rule | None) -> None:
        if vr in ("SQ", "UI"):
            self._remap(ds, tag, vr, rule)  # walk the items / remap: never the original
            return
        element = ds[tag]
        if element.VR in _NUMBER_VRS and element.VR not in ("DS", "IS"):
            element.value = 0
        elif element.VR in _TEXT_VRS or element.VR in _DUMMY:
            element.value = _DUMMY.get(element.VR, DUMMY_TEXT)
        else:
            element.value = _DUMMY_BYTES

    def _remap(self, ds: Dataset, tag: int, vr: str, rule: Rule | None) -> None:
        if vr == "SQ":
            self._items(ds, tag)
            return
        element = ds[tag]
        if element.VR != "UI":
            element.value = None
            return
        _set(element, [self._uid(uid) for uid in _values(element)])

    def _uid(self, uid: str) -> str:
        uid = uid.strip("\0 ")
        if not uid or is_constant_uid(uid):
            return uid
        self.remapped.add(uid)
        return self.remap(uid)

    def _clean(self, ds: Dataset, tag: int, vr: str, rule: Rule | None) -> None:
        if vr in ("SQ", "UI"):
            self._remap(ds, tag, vr, rule)
            return
        element = ds[tag]
        if element.VR in ("DA", "DT"):
            self._dates(element)
        elif element.VR == "PN":
            element.value = DUMMY_TEXT  # a cleaned name is no name
        elif element.VR in _TEXT_VRS:
            _set(element, [self.originals.scrub(v) for v in _values(element)])
        elif element.VR not in _NUMBER_VRS and element.VR not in ("TM", "AS"):
            del ds[tag]  # binary content cannot be cleaned without reading it

    def _dates(self, element: DataElement) -> None:
        mode = self.profile.date_mode
        if mode is DateMode.REMOVE:
            element.value = None
        elif mode is DateMode.SHIFT:
            shift = shift_da if element.VR == "DA" else shift_dt
            _set(element, [shift(v, self.shift_days) for v in _values(element)])

    def _replace(self, ds: Dataset, tag: int, vr: str, rule: Rule | None) -> None:
        ds[tag].value = rule.value if rule is not None else None

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


_HANDLERS: dict[Action, Callable[[Walk, Dataset, int, str, Rule | None], None]] = {
    Action.KEEP: Walk._keep,
    Action.REMOVE: Walk._remove,
    Action.EMPTY: Walk._empty,
    Action.DUMMY: Walk._dummy,
    Action.REMAP: Walk._remap,
    Action.CLEAN: Walk._clean,
    Action.REPLACE: Walk._replace,
}
