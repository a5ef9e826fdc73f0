#!/bin/bash
# Run the whole test suite: ./setup.sh (idempotent), then pytest on tests/.
# Arguments go to pytest, e.g. ./test.sh -k mkdir -x
set -eu
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python -m pytest tests "$@"
