#!/usr/bin/env bash
# Debian's chromium (and a font) for the live-view browser test (tests/web, marker `browser`),
# which playwright drives through the system binary: playwright's own browser download is never
# used. Idempotent: installs only what is missing and says what it does.
set -euo pipefail
packages=(chromium fonts-dejavu-core)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "browser: chromium already installed ($(command -v chromium))"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "browser: apt-get not found; install ${missing[*]} by hand or skip the browser test (pytest -m 'not browser')" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "browser: installing ${missing[*]} with apt-get"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "browser: chromium installed at $(command -v chromium)"
