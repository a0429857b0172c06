#!/usr/bin/env bash
# Refresh constraints.txt, the lock of exact dependency versions that the README's install commands
# and CI use: install dynalab with every extra into a fresh virtual environment at the newest
# versions pyproject.toml allows, then record what got installed. Run the tests with the new lock
# before committing it (the README's test command installs from it).
#
#   scripts/refresh_lock.sh            # writes constraints.txt (needs Python 3.11+ and the package index)
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/pip" install -q --upgrade pip
"$tmp/venv/bin/pip" install -q -e '.[test,ray,tensorboard,wandb]'
{
  echo "# Exact versions dynalab's tests passed with: the lock for the README's install commands and CI"
  echo "# (pip install -c constraints.txt ...). Made by scripts/refresh_lock.sh on $(date -u +%Y-%m-%d)"
  echo "# with $("$tmp/venv/bin/python" -c 'import platform; print(platform.python_implementation(), platform.python_version(), platform.system(), platform.machine())');"
  echo "# tests/test_lock.py checks it agrees with pyproject.toml. Do not edit by hand."
  "$tmp/venv/bin/pip" freeze --exclude-editable | grep -v -e '^-e ' -e '^dynalab[= @]' | LC_ALL=C sort -f
} > constraints.txt
echo "wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
