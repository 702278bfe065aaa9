#!/usr/bin/env bash
# Vendor Chart.js's UMD build from the npm registry into the dashboard's static files.
# Usage: scripts/vendor-chartjs.sh [VERSION]   (default: the version recorded in vendor/README.md)
# The dashboard loads nothing from a CDN: the browser gets this copy from our own server.
set -euo pipefail
cd "$(dirname "$0")/.."

VENDOR=src/backinstock/dashboard/static/vendor
VERSION="${1:-$(sed -n 's/^- version: //p' "$VENDOR/README.md")}"
if [[ -z "$VERSION" ]]; then
  echo "usage: $0 VERSION (e.g. 4.6.1)" >&2
  exit 2
fi

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
(cd "$WORK" && npm pack "chart.js@$VERSION" --json --silent >pack.json)
TARBALL="$WORK/$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["filename"])' "$WORK/pack.json")"
INTEGRITY="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[0]["integrity"])' "$WORK/pack.json")"
# npm checked the tarball against the registry's integrity; check our copy against it again.
COMPUTED="sha512-$(openssl dgst -sha512 -binary "$TARBALL" | base64 -w0)"
if [[ "$COMPUTED" != "$INTEGRITY" ]]; then
  echo "integrity mismatch: registry $INTEGRITY, tarball $COMPUTED" >&2
  exit 1
fi
tar -xzf "$TARBALL" -C "$WORK"

mkdir -p "$VENDOR"
cp "$WORK/package/dist/chart.umd.js" "$VENDOR/chart.umd.js"
cp "$WORK/package/LICENSE.md" "$VENDOR/LICENSE.md"
FILE_SHA256="$(sha256sum "$VENDOR/chart.umd.js" | cut -d' ' -f1)"

cat >"$VENDOR/README.md" <<README
# Vendored: Chart.js

The dashboard draws its charts with Chart.js, served from this folder by our own server
(no CDN at run time). Files are copied unchanged from the npm package.

- package: chart.js
- version: $VERSION
- tarball: https://registry.npmjs.org/chart.js/-/$(basename "$TARBALL")
- integrity: $INTEGRITY
- files: \`package/dist/chart.umd.js\` → \`chart.umd.js\` (sha256 $FILE_SHA256),
  \`package/LICENSE.md\` → \`LICENSE.md\` (MIT)
- command: \`scripts/vendor-chartjs.sh $VERSION\`

The source map named on the file's last line is not shipped; a browser asks for it only
while its developer tools are open.

To update, run the script with the new version, check the dashboard (the browser test in
\`tests/dashboard/test_browser.py\` renders every chart), and commit the three files.
README
echo "vendored chart.js $VERSION ($INTEGRITY)"
