#!/usr/bin/env bash
# Build domus-agent_<version>_amd64.deb into OUT_DIR (default .cache/deb/); prints its path.
# Needs what scripts/bootstrap.sh installs and the repository's venv (make setup). See build_deb.py.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
[[ -x $REPO/.venv/bin/python ]] || { echo "build-deb: no .venv: run make setup" >&2; exit 1; }
exec "$REPO/.venv/bin/python" "$REPO/docker/agent/build_deb.py" "$@"
