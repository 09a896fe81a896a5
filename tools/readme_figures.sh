#!/usr/bin/env bash
# The README's figures: the embedded default's report figures, made if needed (snakemake builds
# only what is missing or out of date), copied to docs/figures/ to be committed.
#
#   bash tools/readme_figures.sh            # from the repository root, after tools/setup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FIGURES=(contribution logit_lens energy cka cka_heatmap probes dynamics_heatmaps)
targets=()
for name in "${FIGURES[@]}"; do targets+=("results/report/figures/${name}.png"); done
.venv/bin/snakemake --cores all "${targets[@]}"
mkdir -p docs/figures
for name in "${FIGURES[@]}"; do
    cp "results/report/figures/${name}.png" "docs/figures/${name}.png"
done
echo "[readme_figures] ${#FIGURES[@]} figures in docs/figures/ (commit them)"
