#!/usr/bin/env bash
# README command 1: set up .venv (scripts/setup.sh) and run the main job on the embedded synthetic
# default (generator v2) -- prepare data, pre-train SASRec item embeddings, tokenize them into OPMQ
# semantic IDs, and train STORE and the DLRM-DCN and DLRM baselines on the same SID features with
# `torchx run` on 2 local CPU ranks (same epoch budget, early stopping on valid, each model scored at its
# best-valid epoch); prints which model won on test AUC and by how much. Extra arguments go to
# `store-rec quickstart` (e.g. --seed 1 --out DIR, --generator v1).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$here"
bash scripts/setup.sh
VENV="${VENV:-$here/.venv}"
exec "$VENV/bin/store-rec" quickstart "$@"
