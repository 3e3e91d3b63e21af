#!/usr/bin/env bash
# OHIF's built viewer (the dist/ folder of the @ohif/app package) for
# tests/test_ohif_viewer.py: fetched from the npm registry with npm's own client (no
# dependency is installed), checked against the published sha512, and kept, git-ignored,
# in tests/ohif/dist. Run again, it does nothing while that version is there. The tests
# never fetch: without dist/ they skip (and CI=1 turns that skip into a failure).
set -euo pipefail

VERSION=3.12.10
INTEGRITY="sha512-0kuF66Mq9c9dMD++bUsTjMrJpXJwaZhz9B4uS244DawAjSkTwIYFU93pxPuRUQixaRi7QAHlF3Fe1qudBlZrmA=="
here=$(cd "$(dirname "$0")" && pwd)
dist="$here/dist"

if [[ -f "$dist/index.html" && "$(cat "$dist/.ohif-version" 2>/dev/null)" == "$VERSION" ]]; then
    echo "OHIF $VERSION is in $dist"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
npm pack --silent --pack-destination "$work" "@ohif/app@$VERSION" >/dev/null
tarball="$work/ohif-app-$VERSION.tgz"
actual=$(node -e 'const c = require("crypto"), fs = require("fs");
  process.stdout.write("sha512-" + c.createHash("sha512")
    .update(fs.readFileSync(process.argv[1])).digest("base64"));' "$tarball")
if [[ "$actual" != "$INTEGRITY" ]]; then
    echo "@ohif/app@$VERSION: the tarball's integrity is $actual, not $INTEGRITY" >&2
    exit 1
fi
tar -xzf "$tarball" -C "$work" package/package.json package/dist
packed=$(node -p 'require(process.argv[1]).version' "$work/package/package.json")
if [[ "$packed" != "$VERSION" ]]; then
    echo "@ohif/app: the tarball holds version $packed, not $VERSION" >&2
    exit 1
fi
echo "$VERSION" > "$work/package/dist/.ohif-version"
rm -rf "$dist.partial" "$dist"
mv "$work/package/dist" "$dist.partial"
mv "$dist.partial" "$dist"
echo "OHIF $VERSION extracted into $dist"
