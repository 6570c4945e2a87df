#!/bin/sh
# dashboard_test.sh TALLYD OUTDIR — runs tests/server/dashboard_test.mjs
# (the dashboard in headless Chromium) with the machine's Node.js; exits 77
# (skipped) when there is none. The script itself skips when playwright-core
# or /usr/bin/chromium is absent.
command -v node >/dev/null 2>&1 || { echo "skipped: no node (run tools/setup)"; exit 77; }
exec node "$(dirname "$0")/dashboard_test.mjs" "$@"
