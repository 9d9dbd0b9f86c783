#!/usr/bin/env bash
# Install the runtime (no torch) into ./.venv and run the main job on the embedded default:
# a node serving the demo tenant (demo-shop) over gRPC on 127.0.0.1:7400 with the shipped,
# signed models, data in ./kefu-data. It prints the demo API key once and how to chat with
# it (`kefu chat` in a second terminal). Ctrl-C stops it cleanly. The demo order center
# (`kefu demo order-center`, 127.0.0.1:7480) runs beside it for the task flows.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e . 2> >(grep -v -E 'editable|^\s*(!!|\*+|$)|precedence|folders in your|strategy, WheelFile' >&2)
# The demo order center the demo tenant's task flows call (orders, tracking, returns, ...);
# it shares ./kefu-data (or $KEFU_DATA_DIR) with the node, which is how the node finds its token.
kefu demo order-center &
order_center=$!
trap 'kill "$order_center" 2>/dev/null || true; wait "$order_center" 2>/dev/null || true' EXIT
kefu node run "$@"
