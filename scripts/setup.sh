#!/usr/bin/env bash
# Create .venv with everything clearbench needs. CPU torch first: an unpinned torch would
# pull several GB of CUDA packages, and torchvision is never needed (nor importable on CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
echo "clearbench installed in .venv (activate: . .venv/bin/activate)"
