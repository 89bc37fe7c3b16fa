#!/usr/bin/env bash
# One-command setup: creates a virtual environment and installs the working stack + store_rec (editable).
#
#   bash scripts/setup.sh            # CPU stack (default): torch 2.13.0 CPU, fbgemm-gpu-cpu 1.8.0
#   STORE_REC_VARIANT=cuda bash scripts/setup.sh   # GPU stack: torch 2.13.0 (CUDA build), fbgemm-gpu 1.8.0
#   VENV=/path/to/venv bash scripts/setup.sh        # another venv location (default: .venv in the repo)
#   STORE_REC_EDITABLE=0 bash scripts/setup.sh      # a regular (non-editable) install of this checkout (Dockerfile)
#
# TORCH_INDEX_URL (both variants): the index torch comes from, e.g. https://download.pytorch.org/whl/cpu for
# the small CPU wheel on a machine whose pip defaults to PyPI (PyPI's Linux torch is the CUDA build).
# CUDA: torch and fbgemm-gpu come from PyPI (their default Linux wheels are CUDA builds) or from
# TORCH_INDEX_URL (e.g. https://download.pytorch.org/whl/cu126, or your mirror); the script then checks
# that torch is a CUDA build and prints the GPUs it sees. Ranks pick nccl when CUDA is visible
# (STORE_REC_BACKEND=gloo|nccl forces one; store_rec.distributed.env). GPU smoke tests: pytest -m gpu.
#
# torchrec is installed with --no-deps plus its real dependencies: a plain `pip install torchrec`
# pulls the CUDA fbgemm-gpu wheel, which replaces fbgemm-gpu-cpu and makes `import torchrec` fail
# on machines without CUDA ("Could not load this library: fbgemm_gpu_config.so").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$here/.venv}"
VARIANT="${STORE_REC_VARIANT:-cpu}"
EDITABLE="${STORE_REC_EDITABLE:-1}"
case "$VARIANT" in cpu|cuda) ;; *) echo "setup.sh: STORE_REC_VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 2 ;; esac
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

if ! STORE_REC_VARIANT="$VARIANT" "$VENV/bin/python" - <<'PYEOF' 2>/dev/null
import importlib.metadata as m, os, sys
fbgemm = "fbgemm-gpu" if os.environ["STORE_REC_VARIANT"] == "cuda" else "fbgemm-gpu-cpu"
want = {"torch": "2.13.0", "torchrec": "1.8.0", "torchx": "0.7.0", fbgemm: "1.8.0"}
ok = all(m.version(k).split("+")[0] == v for k, v in want.items())
import torch, torchrec  # noqa: F401  (fails if fbgemm is broken)
ok = ok and (torch.version.cuda is not None) == (fbgemm == "fbgemm-gpu")
sys.exit(0 if ok else 1)
PYEOF
then
  case "$VARIANT" in
    cpu)
      # the two fbgemm builds share the fbgemm_gpu package: never keep both
      "$VENV/bin/python" -m pip uninstall -y -q fbgemm-gpu 2>/dev/null || true
      # a CUDA torch left from a cuda setup would keep satisfying torch==2.13.0: replace it
      "$VENV/bin/python" -c 'import sys, torch; sys.exit(1 if torch.version.cuda else 0)' 2>/dev/null \
        || "$VENV/bin/python" -m pip uninstall -y -q torch 2>/dev/null || true
      pip_ torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
      pip_ fbgemm-gpu-cpu==1.8.0
      ;;
    cuda)
      # CUDA wheels: torch from the PyTorch CUDA index (or your mirror), fbgemm-gpu matching CUDA.
      "$VENV/bin/python" -m pip uninstall -y -q fbgemm-gpu-cpu 2>/dev/null || true
      "$VENV/bin/python" -c 'import sys, torch; sys.exit(0 if torch.version.cuda else 1)' 2>/dev/null \
        || "$VENV/bin/python" -m pip uninstall -y -q torch 2>/dev/null || true
      pip_ torch==2.13.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
      pip_ fbgemm-gpu==1.8.0 ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"}
      ;;
  esac
  pip_ --no-deps torchrec==1.8.0
  # torchrec's real runtime dependencies (what --no-deps skipped, minus fbgemm-gpu)
  pip_ tensordict "torchmetrics==1.0.3" tqdm pyre-extensions iopath
  pip_ torchx==0.7.0
fi
# kubernetes: torchx's kubernetes scheduler (dry runs are tested); urllib3<1.27 is torchx 0.7.0's pin
pip_ pyarrow numpy pyyaml matplotlib tensorboard pytest kubernetes "urllib3<1.27"
if [ "$EDITABLE" = "1" ]; then
  # the lint + type gate (scripts/lint.sh), pinned so a new release cannot break CI
  pip_ "ruff==0.17.6" "mypy==2.4.1"
  pip_ --no-deps -e "$here"
else
  pip_ --no-deps "$here"   # an image / deployment: no dev tools
fi
if [ "$VARIANT" = "cuda" ]; then
  "$VENV/bin/python" - <<'PYEOF'
import sys, torch
if torch.version.cuda is None:
    sys.exit(f"setup.sh: STORE_REC_VARIANT=cuda but torch {torch.__version__} is a CPU build: set TORCH_INDEX_URL to a "
             "CUDA wheel index (e.g. https://download.pytorch.org/whl/cu126) and rerun")
n = torch.cuda.device_count() if torch.cuda.is_available() else 0
print(f"CUDA torch {torch.__version__} (CUDA {torch.version.cuda}); GPUs visible: {n}"
      + ("" if n else " (none here: training falls back to gloo on CPU; run GPU jobs where GPUs are)"))
PYEOF
fi
"$VENV/bin/python" -c "import torch, torchrec, torchx, store_rec; print(f'store_rec ready: torch {torch.__version__}, torchrec {torchrec.__version__}, venv {\"$VENV\"}')"
