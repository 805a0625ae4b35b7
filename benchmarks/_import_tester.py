"""A re-creation of the hospital's ``import-tester`` script (issue 16 A), the reference side
of ``benchmarks/dqr_faults.py``.

We do not have the original script; this reproduces the behaviour the issue describes, and no
more: for each study of the list, one ``POST /xapi/dqr/import`` with one ``studies[]`` entry
(the row's Subject/Session as DQR's ``relabelMap``), ``--interval`` seconds between calls; a
study is retried only when the HTTP call itself fails (connection error or a non-2xx answer),
up to ``--max-tries`` times; once the call answers 2xx the study counts as "submitted" and the
script moves on. It trusts XNAT from there: it does not follow the queue, read the history or
look at the session.

    python3 benchmarks/_import_tester.py --url URL --project P --pacs-id 1 \\
        --receiver XNAT:8104 --queryfile q.csv --interval 60 --report out.json

The login comes from ``XNAT_USER`` / ``XNAT_PASS`` (Basic auth on each call). The query file
is a CSV with ``StudyInstanceUID``, ``Subject`` and ``Session`` columns. ``--report`` writes a
JSON summary (calls made, studies submitted, studies given up); stdout says what the hospital's
script says: one "submitted" line per study.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import requests


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(encoding="utf-8", newline="") as fh:
        return [dict(r) for r in csv.DictReader(fh)]


def _body(args: argparse.Namespace, row: dict[str, str]) -> dict[str, Any]:
    ae, _, port = args.receiver.rpartition(":")
    return {
        "pacsId": args.pacs_id,
        "aeTitle": ae,
        "port": int(port),
        "projectId": args.project,
        "forceImport": False,
        "studies": [
            {
                "studyInstanceUid": row["StudyInstanceUID"],
                "seriesInstanceUids": [],
                "seriesDescriptions": [],
                "relabelMap": {"Subject": row["Subject"], "Session": row["Session"]},
            }
        ],
    }


def _post(http: requests.Session, url: str, body: dict[str, Any]) -> str:
    """One import call: "" when it answered 2xx, else what went wrong."""
    try:
        answer = http.post(url, json=body, timeout=30)
    except requests.RequestException as exc:
        return f"{type(exc).__name__}: {exc}"
    return "" if answer.ok else f"HTTP {answer.status_code}"


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Submit every study; returns the report."""
    http = requests.Session()
    http.auth = (os.environ["XNAT_USER"], os.environ["XNAT_PASS"])
    url = args.url.rstrip("/") + "/xapi/dqr/import"
    calls, submitted, given_up = 0, 0, 0
    first = True
    for row in _rows(args.queryfile):
        for attempt in range(1, args.max_tries + 1):
            if not first:
                time.sleep(args.interval)
            first = False
            calls += 1
            problem = _post(http, url, _body(args, row))
            if not problem:
                submitted += 1
                print(f"{row['Session']}: submitted", flush=True)
                break
            print(f"{row['Session']}: try {attempt} failed ({problem})", flush=True)
        else:
            given_up += 1
            print(f"{row['Session']}: gave up after {args.max_tries} tries", flush=True)
    return {"calls": calls, "submitted": submitted, "given_up": given_up}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--project", required=True)
    parser.add_argument("--pacs-id", type=int, default=1)
    parser.add_argument("--receiver", required=True, help="XNAT's receiver as AE:port")
    parser.add_argument("--queryfile", type=Path, required=True)
    parser.add_argument("--interval", type=float, default=60.0)
    parser.add_argument("--max-tries", type=int, default=50)
    parser.add_argument("--report", type=Path)
    args = parser.parse_args(argv)
    report = run(args)
    if args.report is not None:
        args.report.write_text(json.dumps(report), encoding="utf-8")
    return 0 if report["given_up"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
