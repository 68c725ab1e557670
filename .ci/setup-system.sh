#!/usr/bin/env bash
# System and non-Python dependencies of the tests; CI runs this as root before the test command.
# Idempotent and quiet: safe to run again on a machine that has everything.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages: the emoji benchmark's font and artwork vendors (docs/emoji.md)
apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-noto-color-emoji fonts-symbola ruby-gemojione

# Node.js for the JS client (runtime/js, tests/test_node_client.py)
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
# onnxruntime-node from the lockfile; --ignore-scripts: its install script downloads GPU binaries from a
# host outside the npm registry, the CPU binaries ship inside the package (runtime/js/.npmrc says the same)
(cd runtime/js && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null)

# Headless Chromium + its WebDriver for the browser tests of `edgecl serve` (tests/test_serve_browser.py)
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends chromium chromium-driver >/dev/null
fi
# onnxruntime-web from the lockfile, copied with its licence (and runtime/js) into the serve package's static/vendor/
(cd runtime/web && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error >/dev/null && node vendor.mjs >/dev/null)
