#!/usr/bin/env bash
# Screenshot one page of the Prefect UI with headless Chromium (Debian's `chromium` package).
#
#   scripts/ui_screenshot.sh URL OUT.png [WIDTHxHEIGHT] [WAIT_MS] [DOM_OUT.html]
#
# URL: a UI page of a running server, e.g. http://127.0.0.1:4200/v2/deployments/deployment/<id>/run (the custom run
# form) or http://127.0.0.1:4200/v2/runs/flow-run/<id> (a run and its graph). A server on a port other than 4200 must
# have been started with PREFECT_UI_API_URL=http://<host>:<port>/api, or the UI asks the wrong port for its data.
# WAIT_MS: Chromium's virtual-time budget, the time the page gets to fetch and draw (default 20000).
# DOM_OUT.html: also write the page's DOM as drawn (a second load with --dump-dom), for checks a picture cannot give.
# CHROMIUM overrides the browser (default: chromium on PATH). Exits 3 when no Chromium is installed.
set -euo pipefail

if [[ $# -lt 2 ]]; then
    echo "usage: $0 URL OUT.png [WIDTHxHEIGHT] [WAIT_MS] [DOM_OUT.html]" >&2
    exit 2
fi
url=$1
out=$2
size=${3:-1400x1000}
wait_ms=${4:-20000}
dom_out=${5:-}
browser=${CHROMIUM:-$(command -v chromium || true)}
if [[ -z "$browser" || ! -x "$browser" ]]; then
    echo "$0: no Chromium (apt-get install -y chromium, or set CHROMIUM)" >&2
    exit 3
fi
if [[ ! "$size" =~ ^[0-9]+x[0-9]+$ ]]; then
    echo "$0: size '$size': expected WIDTHxHEIGHT, e.g. 1400x1000" >&2
    exit 2
fi

# a new empty profile each time: no first-run state, no cached UI bundle of another server or Prefect version
profile=$(mktemp -d "${TMPDIR:-/tmp}/ui-screenshot-profile.XXXXXX")
trap 'rm -rf "$profile"' EXIT
mkdir -p "$(dirname "$out")"
rm -f "$out"

# --no-sandbox: containers run as root, where Chromium's sandbox refuses to start; the page is our own server's UI.
# The --disable-* flags keep Chromium from calling out to Google (there is no network here but the server).
# --virtual-time-budget: the page's clock runs until the budget is spent or the page idles, then the shot is taken.
flags=(--headless --no-sandbox --disable-gpu --disable-quic --no-first-run --disable-background-networking
       --disable-component-update --disable-sync --disable-dev-shm-usage --hide-scrollbars
       --user-data-dir="$profile" --window-size="${size/x/,}" --virtual-time-budget="$wait_ms")
"$browser" "${flags[@]}" --screenshot="$out" "$url" >"$profile/chromium.log" 2>&1 || {
    echo "$0: chromium failed on $url:" >&2
    tail -20 "$profile/chromium.log" >&2
    exit 1
}
if [[ ! -s "$out" ]]; then
    echo "$0: chromium wrote no screenshot of $url:" >&2
    tail -20 "$profile/chromium.log" >&2
    exit 1
fi
if [[ -n "$dom_out" ]]; then
    "$browser" "${flags[@]}" --dump-dom "$url" >"$dom_out" 2>"$profile/chromium-dom.log" || {
        echo "$0: chromium --dump-dom failed on $url:" >&2
        tail -20 "$profile/chromium-dom.log" >&2
        exit 1
    }
fi
echo "$out"
