#!/usr/bin/env bash
# Set up (scripts/setup.sh), then run the test suite with banger's venv; arguments go to pytest
# (e.g. scripts/test.sh -q -m "not slow").
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest "$@"
