#!/usr/bin/env bash
# Debian packages for the live-stream tests: a real RTSP server started on loopback by the tests.
# Skipped when already present; needs root (or sudo) and Debian's package registry.
set -euo pipefail
echo "system deps: none yet"
