#!/usr/bin/env bash
# The one test command, the same locally and in CI: install, then ruff, mypy, pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install.sh

echo "==> ruff"
python3 -m ruff check .
python3 -m ruff format --check .
echo "==> mypy --strict (pacsman/)"
python3 -m mypy
echo "==> pytest"
set +e
python3 -m pytest -q "$@"
status=$?
set -e
if [ "$status" -eq 5 ]; then
  echo "pytest collected no tests" >&2
  exit 1
fi
exit "$status"
