#!/usr/bin/env bash
# Installs what the browser test (scripts/check-browser.sh) needs, and nothing when it is there:
# Debian's chromium (the apt package, not a snap; /usr/bin/chromium) and, in tests/browser/,
# `npm ci` of playwright-core pinned by tests/browser/package-lock.json. Playwright's own browser
# download is turned off (PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1): the test drives Debian's chromium
# through `executablePath`. Needs node and npm (Node.js 20 or later).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "install-browser-deps: ERROR: $*" >&2
    exit 1
}

command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 ||
    die "node and npm not found: install Node.js 20 or later (Debian: apt-get install nodejs npm)"

if ! command -v chromium >/dev/null 2>&1; then
    sudo=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || die "need root (or sudo) to apt-get install chromium"
        sudo=(sudo)
    fi
    echo "install-browser-deps: installing Debian's chromium" >&2
    apt_log="$(mktemp)"
    trap 'rm -f "$apt_log"' EXIT
    if ! "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        -o DPkg::Lock::Timeout=300 chromium >"$apt_log" 2>&1; then
        "${sudo[@]}" apt-get update >"$apt_log" 2>&1 || true
        "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
            -o DPkg::Lock::Timeout=300 chromium >"$apt_log" 2>&1 ||
            die "apt-get install chromium failed: $(tail -5 "$apt_log")"
    fi
fi

# npm ci only when node_modules does not hold exactly the locked version.
want="$(node -e 'console.log(require("./tests/browser/package-lock.json").packages["node_modules/playwright-core"].version)')"
have="$(node -e 'try { console.log(require("./tests/browser/node_modules/playwright-core/package.json").version) } catch { console.log("") }')"
if [ "$want" != "$have" ]; then
    echo "install-browser-deps: npm ci in tests/browser (playwright-core $want)" >&2
    (cd tests/browser && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
fi
