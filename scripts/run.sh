#!/usr/bin/env bash
# Install the runtime (no torch) into ./.venv and run the main job on the embedded default
# (`kefu up`): a nats-server with JetStream, the control plane, the demo order center the demo
# tenant's task flows call, and a node in region `local` serving the demo tenant (demo-shop)
# over gRPC on 127.0.0.1:7400 with the shipped, signed models published and assigned through
# the control plane; data in ./kefu-data. It prints how to chat (`kefu chat -d` in a second
# terminal). Ctrl-C stops everything cleanly.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e . 2> >(grep -v -E 'editable|^\s*(!!|\*+|$)|precedence|folders in your|strategy, WheelFile' >&2)
exec kefu up "$@"
