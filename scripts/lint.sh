#!/usr/bin/env bash
# Lint + type gate (configured in pyproject.toml [tool.ruff] / [tool.mypy]); .ci/run runs it before the tests.
#
#   bash scripts/lint.sh            # ruff on store_rec, tests, scripts, launch; mypy on store_rec
#   VENV=/path/to/venv bash scripts/lint.sh
#
# ruff and mypy are installed (pinned) by scripts/setup.sh. Exit status: non-zero when either finds a problem.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$here/.venv}"
cd "$here"
status=0
echo "lint: ruff $("$VENV/bin/ruff" --version | cut -d' ' -f2)"
"$VENV/bin/ruff" check store_rec tests scripts launch || status=1
echo "lint: mypy $("$VENV/bin/mypy" --version | cut -d' ' -f2)"
"$VENV/bin/mypy" || status=1
exit $status
