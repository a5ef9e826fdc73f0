#!/bin/bash
# Run the demo: ./setup.sh (idempotent), then demo.py, which starts a ZEO
# server, writes a sample ZBigFile, mounts wcfs and reads the file through it.
# ./demo.sh --db postgres does the same on RelStorage in a private PostgreSQL
# cluster.
set -eu
cd "$(dirname "$0")"
./setup.sh
exec .venv/bin/python demo.py "$@"
