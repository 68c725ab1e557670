#!/usr/bin/env bash
# What the tests need outside Python, installed before them (idempotent and quiet; the README's test command
# runs it, as root or with sudo): Debian packages and the npm packages of the JavaScript clients.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
apt_install() {  # the Debian packages among "$@" that are not installed yet
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}
# the emoji benchmark's font and artwork vendors (docs/emoji.md)
apt_install fonts-noto-color-emoji fonts-symbola ruby-gemojione
# Node.js for the JS client (runtime/js, tests/test_node_client.py)
command -v node >/dev/null && command -v npm >/dev/null || apt_install nodejs npm
# headless Chromium + its WebDriver for the browser tests of `edgecl serve` (tests/test_serve_browser.py)
apt_install chromium chromium-driver
# onnxruntime-node from the lockfile; --ignore-scripts: its install script downloads GPU binaries from a
# host outside the npm registry, the CPU binaries ship inside the package (runtime/js/.npmrc says the same)
(cd runtime/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)
# onnxruntime-web from the lockfile, copied with its licence (and runtime/js) into the serve package's static/vendor/
(cd runtime/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null && node vendor.mjs >/dev/null)
