"""``convert_series``: one de-identified series folder -> NIfTI + sidecars, checked.

The steps, each a reason to stop:

1. read the headers (never the pixels): no DICOM -> FAILED; an instance not de-identified
   (PatientIdentityRemoved != YES) -> FAILED; no image SOP class -> SKIPPED;
2. dcm2niix (``-z y -b y -ba y -f series-<SeriesNumber>``) into a 0700 temporary folder:
   a non-zero exit (8: partial conversion), a timeout, or no NIfTI -> FAILED;
3. the slice count: NIfTI slices x volumes, summed over the outputs, must equal the image
   instances (a multi-frame instance counts its frames) -> else FAILED.  dcm2niix exits 0
   on a series with a missing slice: it warns and writes an extra, equalized volume;
4. the PHI checks of every sidecar and NIfTI header (:mod:`._check`) -> a hit QUARANTINES
   the outputs;
5. ``provenance.json``, then one rename into ``<out>/nifti/<subject>/<session>/<N>/``.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, datetime
from pathlib import Path

import structlog

from pacsman import __version__
from pacsman.anonymize import Originals
from pacsman.layout import write_private
from pacsman.nifti import _dcm2niix
from pacsman.nifti._check import (
    Finding,
    allowed_values,
    header_findings,
    nifti_slices,
    sidecar_findings,
)
from pacsman.nifti._place import (
    PROVENANCE_FILE,
    REASON_FILE,
    discard,
    install,
    nifti_directory,
    quarantine_directory,
    scratch,
    write_json,
)
from pacsman.nifti._result import NiftiOutcome, NiftiResult
from pacsman.nifti._series import SeriesHeaders, folder_instances, series_headers

__all__ = ["convert_series"]

_log = structlog.get_logger("pacsman.nifti")
_OUTPUTS = (".nii.gz", ".nii", ".json", ".bval", ".bvec")


def convert_series(
    series_dir: Path,
    out_root: Path,
    *,
    subject: str,
    session: str,
    series_number: str,
    originals: Originals | None = None,
    quarantine: Path | None = None,
    timeout: float = 600.0,
) -> NiftiResult:
    """Convert the de-identified DICOM files directly in ``series_dir`` (see the module).

    ``originals`` (the source's identifying values, from the raw DICOM) turns on the leak
    check of the sidecars; ``quarantine`` is the root of the quarantine folders (default
    ``<out_root>/nifti-quarantine``).  Every outcome but a raised error is a result.

    Raises:
        FatalError: the dcm2niix wheel or its binary is missing (the fix is named).
        OSError: an output cannot be written (e.g. the disk is full).
    """
    started = time.monotonic()
    target = nifti_directory(out_root, subject, session, series_number)
    held = quarantine_directory(out_root, quarantine, subject, session, series_number)
    job = _Job(series_dir, out_root, target, held, series_number, (subject, session), timeout)
    result = job.run(originals)
    _log.info(
        "nifti_series_done",
        series_number=series_number,
        outcome=result.outcome.value,
        instances=result.instances,
        slices=result.slices,
        seconds=round(time.monotonic() - started, 3),
    )
    return result


class _Job:
    """One call of :func:`convert_series`: its inputs, and the steps as small methods."""

    def __init__(
        self,
        series_dir: Path,
        out_root: Path,
        target: Path,
        held: Path,
        series_number: str,
        labels: tuple[str, str],
        timeout: float,
    ) -> None:
        self.series_dir, self.out_root, self.target, self.held = series_dir, out_root, target, held
        self.number, self.labels = series_number, labels
        self.timeout = timeout
        self.label = f"series {series_number}"
        self.headers = SeriesHeaders()

    def result(
        self,
        outcome: NiftiOutcome,
        reason: str,
        *,
        slices: int | None = None,
        files: tuple[Path, ...] = (),
    ) -> NiftiResult:
        if outcome is not NiftiOutcome.CONVERTED:
            discard(self.target)  # nothing of an earlier conversion may pass for this one
        held = outcome is NiftiOutcome.QUARANTINED
        return NiftiResult(
            outcome,
            f"{self.label}: {reason}" if reason else "",
            self.held if held else self.target,
            files,
            slices,
            self.headers.instances,
        )

    def run(self, originals: Originals | None) -> NiftiResult:
        early = self.precheck()
        if early is not None:
            return early
        work = scratch(self.out_root)
        try:
            return self.convert(work, originals)
        finally:
            if work.exists():
                shutil.rmtree(work)

    def precheck(self) -> NiftiResult | None:
        if not self.series_dir.is_dir():
            return self.result(NiftiOutcome.FAILED, f"{self.series_dir} is not a folder")
        self.headers = series_headers(folder_instances(self.series_dir))
        headers = self.headers
        if headers.instances == 0:
            return self.result(NiftiOutcome.FAILED, f"no DICOM instance in {self.series_dir}")
        if headers.identified:
            return self.result(
                NiftiOutcome.FAILED,
                f"{headers.identified} of {headers.instances} instance(s) are not de-identified "
                "(PatientIdentityRemoved is not YES); run pacsman anonymize first",
            )
        if not headers.images:
            reason, count = headers.skipped.most_common(1)[0]
            return self.result(NiftiOutcome.SKIPPED, f"{reason} ({count} instance(s))")
        return None

    def convert(self, work: Path, originals: Originals | None) -> NiftiResult:
        name = _dcm2niix.output_name(self.number)
        done = _dcm2niix.run(self.series_dir, work, name, timeout=self.timeout)
        said = _dcm2niix.tail(done.output, (self.series_dir, work))
        kind = originals.find_in_text(said) if originals is not None and said else None
        if kind is not None:  # reasons are stored and printed: never an original
            said = f"(its output is withheld: the leak check found an original {kind} in it)"
        if done.returncode is None:
            return self.result(
                NiftiOutcome.FAILED,
                f"dcm2niix ran longer than {self.timeout:g} s and was stopped; raise the "
                "timeout or check the series",
            )
        if done.returncode != 0:
            meaning = _dcm2niix.exit_meaning(done.returncode)
            return self.result(
                NiftiOutcome.FAILED,
                f"dcm2niix exited with {done.returncode} ({meaning}): {said or 'no output'}",
            )
        return self.check(work, said, originals)

    def check(self, work: Path, said: str, originals: Originals | None) -> NiftiResult:
        images = sorted(p for p in work.iterdir() if p.name.endswith((".nii.gz", ".nii")))
        if not images:
            return self.result(
                NiftiOutcome.FAILED, f"dcm2niix exited 0 but wrote no NIfTI: {said or 'no output'}"
            )
        try:
            slices = sum(nifti_slices(p) for p in images)
        except (OSError, ValueError) as exc:
            return self.result(NiftiOutcome.FAILED, f"nibabel cannot read the NIfTI ({exc})")
        expected = self.headers.frames
        if slices != expected:
            return self.result(
                NiftiOutcome.FAILED,
                f"the NIfTI holds {slices} slice(s) x volume(s) in {len(images)} file(s), but "
                f"the series has {expected} image instance(s)/frame(s): a slice is missing or "
                f"extra, so the volume would be wrong; dcm2niix said: {said or 'nothing'}",
                slices=slices,
            )
        findings = self.findings(work, images, originals)
        if findings:
            return self.quarantine(work, findings, slices)
        return self.install(work, slices, originals is not None)

    def findings(
        self, work: Path, images: list[Path], originals: Originals | None
    ) -> list[Finding]:
        allowed = allowed_values(
            self.labels,
            (pair for instance in self.headers.images for pair in instance.phi),
        )
        found: list[Finding] = []
        for sidecar in sorted(work.glob("*.json")):
            try:
                found += sidecar_findings(sidecar, allowed=allowed, originals=originals)
            except (OSError, ValueError):
                found.append(Finding(sidecar.name, "(whole file)", "unreadable JSON", "key"))
        if originals is not None:
            for image in images:
                found += header_findings(image, originals)
        return found

    def quarantine(self, work: Path, findings: list[Finding], slices: int) -> NiftiResult:
        held = self.held
        first = str(findings[0]) + (f" (and {len(findings) - 1} more)" if len(findings) > 1 else "")
        reason = (
            f"PHI check: {first}; outputs quarantined in {held}; never push them, and "
            "check the anonymization profile"
        )
        write_private(work / REASON_FILE, "\n".join(str(f) for f in findings).encode() + b"\n")
        install(work, held)
        return self.result(NiftiOutcome.QUARANTINED, reason, slices=slices)

    def install(self, work: Path, slices: int, leak_checked: bool) -> NiftiResult:
        outputs = sorted(p.name for p in work.iterdir() if p.name.endswith(_OUTPUTS))
        write_json(work / PROVENANCE_FILE, self.provenance(outputs, slices, leak_checked))
        install(work, self.target)
        discard(self.held)
        files = tuple(self.target / name for name in outputs)
        return self.result(NiftiOutcome.CONVERTED, "", files=files, slices=slices)

    def provenance(self, outputs: list[str], slices: int, leak_checked: bool) -> dict[str, object]:
        name = _dcm2niix.output_name(self.number)
        return {
            "tool": "dcm2niix",
            "version": _dcm2niix.version(),
            "wheel": f"dcm2niix=={_dcm2niix.wheel_version()}",
            "options": [*_dcm2niix.OPTIONS, "-f", name],
            "instances": self.headers.instances,
            "image_frames": self.headers.frames,
            "slices": slices,
            "files": outputs,
            "checks": ["slice count", "PHI keys"] + (["leak check"] if leak_checked else []),
            "pacsman": __version__,
            "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        }
