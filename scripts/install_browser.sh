#!/usr/bin/env bash
# Install the system Chromium that the browser tests drive through Playwright.
#
# Playwright's own browser download cannot work here (only package registries are reachable), so the
# tests launch Debian's chromium via executable_path="/usr/bin/chromium". Idempotent: does nothing
# when /usr/bin/chromium is already there. Needs root (or sudo) for apt-get.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
  echo "chromium already installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO="sudo -n"
  else
    echo "install_browser.sh: need root (or sudo) to apt-get install chromium" >&2
    exit 1
  fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "installing chromium and chromium-driver with apt-get ..."
$SUDO apt-get update -qq >/dev/null
# fonts-liberation: readable text in screenshots (with --no-install-recommends chromium brings no fonts).
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-liberation \
  >/dev/null 2> >(grep -v "^debconf: delaying package configuration" >&2)

if [ ! -x "$CHROMIUM" ]; then
  echo "install_browser.sh: apt-get finished but $CHROMIUM is still missing" >&2
  exit 1
fi
echo "chromium installed: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"
