#!/usr/bin/env bash
# Installs the Debian/Ubuntu packages in apt-packages.txt that are missing.
# As root it installs them; otherwise it says what to install and carries on
# (the Python parts still work; tests that need a missing program will fail
# and name it). Then unpacks QEMU 10.0 beside the system's QEMU (setup-qemu10.sh).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# on every way out of the package part below (it ends with exit 0 in several places)
trap 'rc=$?; [ $rc -ne 0 ] || bash "$here/setup-qemu10.sh" || rc=$?; exit $rc' EXIT
mapfile -t wanted < <(sed -e 's/#.*//' -e '/^\s*$/d' "$here/apt-packages.txt")
if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "setup: not a Debian/Ubuntu system; install the equivalents of: ${wanted[*]}" >&2
  exit 0
fi
missing=()
for pkg in "${wanted[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null || true)
  [[ $status == "install ok installed" ]] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "setup: these system packages are missing; install them with:" >&2
  echo "  sudo apt-get install ${missing[*]}" >&2
  exit 0
fi
echo "setup: installing ${#missing[@]} system packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q "${missing[@]}"
