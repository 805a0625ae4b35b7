#!/usr/bin/env bash
# One command on a fresh machine: install what is missing (scripts/install.sh), start a demo
# PACS (Orthanc, synthetic studies) and a local XNAT emulator, and run
#   pacsman --queryfile queryfiles/example.csv --save --push --info
# against them: query, retrieve, verify, de-identify, push to XNAT and verify there; then a
# per-row report.  Everything it writes goes to --workdir (default ./demo-work, in the folder
# you run this from).  Options: [--workdir DIR] [--keep-running] (scripts/demo.py --help).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bash "$here/install.sh"
PYTHONDONTWRITEBYTECODE=1 exec python3 "$here/demo.py" "$@"
