#!/usr/bin/env bash
# simple-whip-server (Meetecho's WHIP front for Janus's VideoRoom), for the WHIP tests.
#
# Debian packages it, but its node-websocket is built against Debian's own Node.js
# (libnode108), which cannot be installed beside a Node.js from elsewhere (it
# conflicts with nodejs-legacy). So: Debian's package where it installs; otherwise
# its JavaScript from Debian's .deb, with its few modules from npm beside it, run by
# the Node.js that is there. Either way tests/e2e/test_whip.py finds it.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
dest="$here/.cache/simple-whip-server"
if [ -f /usr/share/simple-whip-server/src/server.js ] || [ -f "$dest/src/server.js" ]; then
  exit 0
fi
if ! command -v dpkg-query >/dev/null 2>&1; then
  echo "setup: not Debian: no simple-whip-server, the WHIP tests will be skipped" >&2
  exit 0
fi
# Debian's package (it brings Debian's Node.js where there is none); never removing
# anything to make room for it
if [ "$(id -u)" -eq 0 ] && apt-get install -y -q --no-remove simple-whip-server >/dev/null 2>&1; then
  exit 0
fi
if ! command -v node >/dev/null 2>&1; then
  echo "setup: simple-whip-server does not install and there is no Node.js:" \
    "the WHIP tests will be skipped" >&2
  exit 0
fi
if ! command -v npm >/dev/null 2>&1; then
  echo "setup: simple-whip-server does not install here and there is no npm" >&2
  exit 0
fi
echo "setup: simple-whip-server from Debian's package, its modules from npm, into $dest"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && apt-get download -q simple-whip-server >/dev/null 2>&1); then
  # no package lists yet (a fresh machine whose other packages were all there)
  [ "$(id -u)" -eq 0 ] && apt-get update -q >/dev/null
  (cd "$work" && apt-get download -q simple-whip-server >/dev/null)
fi
dpkg-deb -x "$work"/simple-whip-server_*.deb "$work/x"
mkdir -p "$dest"
cp -r "$work/x/usr/share/simple-whip-server/." "$dest/"
cp "$work/x/etc/simple-whip-server/config.js" "$dest/src/config.js.dist"
cat > "$dest/package.json" <<'JSON'
{"name": "simple-whip-server-local", "private": true, "version": "0.0.0",
 "dependencies": {"async": "^3", "body-parser": "^1", "colors": "^1.4.0", "cors": "^2",
                  "debug": "^4", "express": "^4", "websocket": "^1"}}
JSON
(cd "$dest" && npm install --no-audit --no-fund --omit=dev --loglevel=error >/dev/null)
