#!/usr/bin/env bash
# mypy cannot follow setuptools' package-dir mapping (node/ is kefu.node, ...), so we hand it
# the installed layout as a tree of symlinks and check the package `kefu` as a whole.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
mkdir "$tree/kefu"
for f in kefu/*; do ln -s "$root/$f" "$tree/kefu/"; done
for pkg in models node control_plane tui; do ln -s "$root/$pkg" "$tree/kefu/$pkg"; done
cd "$tree"
mypy --config-file "$root/pyproject.toml" -p kefu
