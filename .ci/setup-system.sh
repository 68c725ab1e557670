#!/usr/bin/env bash
# What the tests need outside Python, installed before them (idempotent, quiet; the README's test command runs it):
# - Debian packages: the emoji benchmark's font and artwork vendors (docs/emoji.md);
# - npm packages of the JavaScript client (runtime/js, from its lockfile).
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
DEBS="fonts-noto-color-emoji fonts-symbola ruby-gemojione"
if ! dpkg -s $DEBS >/dev/null 2>&1; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends $DEBS >/dev/null
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# --ignore-scripts: onnxruntime-node's install script downloads GPU binaries from a host outside the npm
# registry; its CPU binaries ship inside the package (runtime/js/.npmrc says the same)
if [ -f runtime/js/package-lock.json ]; then
  (cd runtime/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
