#!/usr/bin/env bash
# One-command setup: creates a virtual environment and installs the working stack + store_rec (editable).
#
#   bash scripts/setup.sh            # CPU stack (default): torch 2.13.0 CPU, fbgemm-gpu-cpu 1.8.0
#   STORE_REC_VARIANT=cuda bash scripts/setup.sh   # GPU stack: torch 2.13.0 (CUDA build), fbgemm-gpu 1.8.0
#   VENV=/path/to/venv bash scripts/setup.sh        # another venv location (default: .venv in the repo)
#
# torchrec is installed with --no-deps plus its real dependencies: a plain `pip install torchrec`
# pulls the CUDA fbgemm-gpu wheel, which replaces fbgemm-gpu-cpu and makes `import torchrec` fail
# on machines without CUDA ("Could not load this library: fbgemm_gpu_config.so").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$here/.venv}"
VARIANT="${STORE_REC_VARIANT:-cpu}"
PY="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
# pip's noise from this machine's file:// index config and torchrec's expected "requires fbgemm-gpu"
# resolver note (we install fbgemm-gpu-cpu instead) is filtered; the exit status is kept.
pip_() {
  # with pipefail the pipeline fails (and set -e stops the script) when pip fails
  "$VENV/bin/python" -m pip install --disable-pip-version-check -q "$@" 2>&1 \
    | { grep -vE "is ignored: it is neither a file nor a directory|dependency resolver does not currently take|torchrec 1.8.0 requires fbgemm-gpu, which is not installed" || true; }
}

if ! "$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import importlib.metadata as m, sys
want = {"torch": "2.13.0", "torchrec": "1.8.0", "torchx": "0.7.0"}
ok = all(m.version(k).split("+")[0] == v for k, v in want.items())
import torchrec  # noqa: F401  (fails if fbgemm is broken)
sys.exit(0 if ok else 1)
PYEOF
then
  case "$VARIANT" in
    cpu)
      pip_ torch==2.13.0
      pip_ fbgemm-gpu-cpu==1.8.0
      ;;
    cuda)
      # CUDA wheels: torch from the PyTorch CUDA index (or your mirror), fbgemm-gpu matching CUDA.
      pip_ torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
      pip_ fbgemm-gpu==1.8.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
      ;;
    *) echo "setup.sh: STORE_REC_VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 2 ;;
  esac
  pip_ --no-deps torchrec==1.8.0
  # torchrec's real runtime dependencies (what --no-deps skipped, minus fbgemm-gpu)
  pip_ tensordict "torchmetrics==1.0.3" tqdm pyre-extensions iopath
  pip_ torchx==0.7.0
fi
# kubernetes: torchx's kubernetes scheduler (dry runs are tested); urllib3<1.27 is torchx 0.7.0's pin
pip_ pyarrow numpy pyyaml matplotlib tensorboard pytest kubernetes "urllib3<1.27"
# the lint + type gate (scripts/lint.sh), pinned so a new release cannot break CI
pip_ "ruff==0.17.6" "mypy==2.4.1"
pip_ --no-deps -e "$here"
"$VENV/bin/python" -c "import torch, torchrec, torchx, store_rec; print(f'store_rec ready: torch {torch.__version__}, torchrec {torchrec.__version__}, venv {\"$VENV\"}')"
