# Sourced by scripts/demo.sh and .ci/run: a virtual environment in .venv with the project installed.
# TORCH_SPEC picks the PyTorch build (default: torch 2.13.0; on a CPU-only machine without a local wheel,
# e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu" avoids the large CUDA build).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q ${TORCH_SPEC:-torch==2.13.0}
python -m pip install -q -e ".[test,hf]"
if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced: the environment ends with this script
    echo "set up .venv; in your shell: source .venv/bin/activate"
fi
