#!/usr/bin/env bash
# One command on a fresh machine: install, start a demo PACS (Orthanc) with synthetic studies,
# run `pacsman --queryfile queryfiles/example.csv --info` against it, show the result.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec python3 scripts/demo.py "$@"
