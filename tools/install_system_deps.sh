#!/usr/bin/env bash
# Debian packages the tests need, installed only when missing:
# - GStreamer's RTSP server (run by the system python3 through PyGObject), which
#   tests/rtsp_server.py starts on 127.0.0.1 for the live-stream tests;
# - Chromium and a font, which playwright drives for the web-view tests (playwright's own
#   browser download is never used);
# - mosquitto, the MQTT broker tests/mqtt_broker.py starts on 127.0.0.1 (a broker service is never used
#   by the tests: they start their own on a free port, whatever service the package starts).
set -euo pipefail
packages=(gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-base
          gstreamer1.0-plugins-good chromium fonts-dejavu-core mosquitto)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if ! command -v apt-get >/dev/null; then
  echo "system deps: apt-get not found; install ${missing[*]} by hand or skip those tests" \
       "(pytest -m 'not rtsp and not browser')" >&2
  exit 1
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "system deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
