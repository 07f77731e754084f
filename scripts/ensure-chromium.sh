#!/usr/bin/env bash
# Prints the path of the Chromium the browser test drives: $CHROMIUM_BIN if set, else Debian's `chromium`,
# installed with apt-get when missing (scripts/ensure-debian-tool.sh). No browser is downloaded from
# anywhere else.
set -euo pipefail
source "${BASH_SOURCE[0]%/*}/ensure-debian-tool.sh"
ensure_debian_tool ensure-chromium.sh chromium chromium CHROMIUM_BIN
