#!/usr/bin/env bash
# Install what pacsman needs on a fresh Debian machine: Orthanc and DCMTK (real peers for the
# tests, the demo and the benchmarks), systemd-analyze (unit checks) and chromium with its
# driver (the service page's browser test), PostgreSQL (the tests' own throw-away clusters) from
# apt, and pacsman itself (editable, with test extras).
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
[ -x /usr/sbin/Orthanc ] || need_apt+=(orthanc)
[ -x /usr/bin/findscu ] || need_apt+=(dcmtk)
# systemd-analyze checks the systemd units pacsman ships (tests/test_systemd_units.py).
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
# Debian's chromium and its driver: the browser test of the service's page (Selenium is
# pointed at both, so nothing downloads a browser).
[ -x /usr/bin/chromium ] || need_apt+=(chromium)
[ -x /usr/bin/chromedriver ] || need_apt+=(chromium-driver)
# Debian's PostgreSQL: tests start their own throw-away cluster (pacsman.testing.postgres)
# with initdb/postgres from /usr/lib/postgresql/*/bin, run as the package's postgres user.
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql)
if [ ${#need_apt[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "==> apt-get install ${need_apt[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
# Debian's orthanc package may start a system Orthanc on port 4242; pacsman's tests and demo
# start their own on OS-chosen ports and never touch it.  Likewise Debian's postgresql package
# may start a system cluster on port 5432: the tests neither enable, start nor use it.

echo "==> pip install -e .[test]"
python3 -m pip install -q --disable-pip-version-check -e '.[test]' 2>&1 | grep -v '^WARNING: \(Location\|Running pip as\)' || true
python3 -c 'import pacsman' # fails loudly if the install did not work
