#!/usr/bin/env bash
# QEMU 10.0 beside the system's QEMU 7.2, for the tests that run every QEMU end-to-end
# test against both (and `python -m saffron.bench.qemu_present`).
#
# Downloads Debian's bookworm-backports QEMU packages with `apt-get download` through a
# temporary sources list (the system's apt configuration and package lists stay as they
# are; nothing is installed) and unpacks them with `dpkg -x` into a private prefix:
# .cache/qemu10 in this checkout, or $SAFFRON_QEMU10_PREFIX. Run it as
#   QEMU_MODULE_DIR=$prefix/usr/lib/x86_64-linux-gnu/qemu \
#     $prefix/usr/bin/qemu-system-x86_64 -L $prefix/usr/share/qemu ...
# It uses the system's shared libraries (those of bookworm's QEMU 7.2 packages and of
# apt-packages.txt), SeaBIOS and iPXE ROMs. Does nothing when the prefix is there.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=${SAFFRON_QEMU10_PREFIX:-$(dirname "$here")/.cache/qemu10}
packages=(qemu-system-x86 qemu-system-common qemu-system-data qemu-system-modules-opengl qemu-system-gui)
stamp=$prefix/.saffron-qemu10
binary=$prefix/usr/bin/qemu-system-x86_64

fail() {
  echo "setup: QEMU 10.0 not installed into $prefix: $*" >&2
  exit 1
}

if [ -f "$stamp" ] && [ -x "$binary" ]; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-deb >/dev/null 2>&1; then
  echo "setup: not a Debian system; the QEMU 10.0 tests need QEMU 10.0.x unpacked into $prefix" >&2
  exit 0
fi
. /etc/os-release
codename=${VERSION_CODENAME:-}
[ "$codename" = bookworm ] || fail "this takes QEMU 10.0 from bookworm-backports; this system is '${codename:-unknown}'"
[ "$(dpkg --print-architecture)" = amd64 ] || fail "only amd64 is supported"

# The system's Debian mirror (whatever CI or the user configured), for the backports suite.
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(IDENTIFIER)' 2>/dev/null |
  awk -v s="$codename" '$2 == s && $3 == "Packages" {print $1; exit}')
[ -n "$mirror" ] || fail "no apt source for Debian $codename found to take $codename-backports from"

work=$(mktemp -d "${TMPDIR:-/tmp}/saffron-qemu10.XXXXXX")
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/lists/partial" "$work/cache/archives/partial" "$work/debs" "$work/root"
keyring=/usr/share/keyrings/debian-archive-keyring.gpg
signed=""
[ -f "$keyring" ] && signed="[signed-by=$keyring] "
echo "deb ${signed}${mirror%/} $codename-backports main" >"$work/sources.list"
chmod -R a+rX "$work" # apt's download sandbox user reads and writes through these
[ "$(id -u)" -ne 0 ] || chown -R _apt "$work/lists" "$work/debs" 2>/dev/null || true
apt_opts=(
  -q
  -o "Dir::Etc::sourcelist=$work/sources.list"
  -o "Dir::Etc::sourceparts=-"
  -o "Dir::State::Lists=$work/lists"
  -o "Dir::Cache=$work/cache"
  -o "APT::Get::List-Cleanup=0"
)
echo "setup: unpacking QEMU 10.0 from $codename-backports (${packages[*]}) into $prefix"
apt-get "${apt_opts[@]}" update >"$work/apt.log" 2>&1 ||
  fail "apt-get update of $codename-backports failed: $(tail -n 3 "$work/apt.log")"
(cd "$work/debs" && apt-get "${apt_opts[@]}" download "${packages[@]/%//$codename-backports}") \
  >>"$work/apt.log" 2>&1 || fail "apt-get download failed: $(tail -n 3 "$work/apt.log")"
for deb in "$work"/debs/*.deb; do
  dpkg-deb -x "$deb" "$work/root"
done
version=$(QEMU_MODULE_DIR="$work/root/usr/lib/x86_64-linux-gnu/qemu" \
  "$work/root/usr/bin/qemu-system-x86_64" --version 2>&1 | head -n 1) ||
  fail "the unpacked QEMU does not run: $version"
case "$version" in
  *"version 10.0."*) ;;
  *) fail "$codename-backports has '$version', not QEMU 10.0.x" ;;
esac
missing=$(ldd "$work/root/usr/bin/qemu-system-x86_64" "$work/root/usr/lib/x86_64-linux-gnu/qemu/ui-dbus.so" |
  awk '/not found/ {print $1}' | sort -u | tr '\n' ' ')
[ -z "$missing" ] || fail "shared libraries missing on this system: $missing(install bookworm's qemu-system-x86 and qemu-system-gui)"
[ -f "$work/root/usr/lib/x86_64-linux-gnu/qemu/ui-dbus.so" ] || fail "no ui-dbus module in the packages"
rm -rf "$prefix"
mkdir -p "$(dirname "$prefix")"
mv "$work/root" "$prefix"
echo "$version" >"$stamp"
