#!/usr/bin/env bash
# README command 1: set up .venv (scripts/setup.sh) and run the main job on the embedded synthetic
# default -- prepare data, pre-train SASRec item embeddings, tokenize them into OPMQ semantic IDs, and
# train STORE and a DLRM-DCN baseline with `torchx run` on 2 local CPU ranks; prints AUC / GAUC /
# LogLoss side by side. Extra arguments go to `store-rec quickstart` (e.g. --rows 200000 --out DIR).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
VENV="${VENV:-$here/.venv}"
exec "$VENV/bin/store-rec" quickstart "$@"
