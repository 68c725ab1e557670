#!/usr/bin/env bash
# Debian packages the tests need, installed as root before them (idempotent, quiet):
# the emoji benchmark's font and artwork vendors (docs/emoji.md).
set -euo pipefail
apt-get update -qq && apt-get install -y -qq --no-install-recommends fonts-noto-color-emoji fonts-symbola ruby-gemojione
