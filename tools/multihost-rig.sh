#!/usr/bin/env bash
# Build the multi-host rig (tests/multihost/rig.py) by hand: network namespaces on private bridges,
# Redis with a replica and three sentinels, two gateways, two workers, a client host. It prints the
# addresses and how to reach them; Ctrl-C removes every namespace, link and process it made.
# Needs root (ip netns) and the venv (`make install`, or PYTHON=/path/to/venv/bin/python): e.g.
# `sudo tools/multihost-rig.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
PATH="$(dirname "$PYTHON"):$PATH" PYTHONPATH="$PWD" exec "$PYTHON" -m tests.multihost.rig
