#!/usr/bin/env bash
# Install the runtime (no torch) into ./.venv and run the main job on the embedded default:
# the shipped demo-shop models are verified, put in ./kefu-data and answer sample questions.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q -e .
kefu model list
kefu model predict demo-shop-intent \
  --text "我的订单什么时候到" --text "I want to return the shoes from order 2024112512345678"
kefu model predict sentiment --text "等了一个星期还没到，气死了" --text "thanks, that was quick!"
