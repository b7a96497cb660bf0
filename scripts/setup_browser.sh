#!/usr/bin/env bash
# Debian's Chromium for the app's end-to-end browser tests (Playwright drives it through
# executable_path=/usr/bin/chromium; no browser is ever downloaded). Installed when missing and we
# are root; otherwise the browser tests skip with a message saying why.
set -u
[ -x /usr/bin/chromium ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[setup] installing Debian chromium for the browser tests"
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "[setup] warning: could not install chromium; browser tests will be skipped"
else
  echo "[setup] /usr/bin/chromium missing and not root: browser tests will be skipped"
fi
exit 0
