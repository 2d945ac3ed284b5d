#!/usr/bin/env bash
# Train and evaluate an ebm project on the bundled GND sample (see README.md).
# Runs from anywhere; keeps Annif's data in examples/work/.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
annif="${ANNIF:-$(dirname "$(command -v python)")/annif}"
[ -x "$annif" ] || annif="$here/../.venv/bin/annif"
export ANNIF_PROJECTS="$here/projects.cfg" ANNIF_DATADIR="$here/work" HF_HUB_OFFLINE=1
"$annif" load-vocab --language en gnd-sample "$here/data/gnd-sample.tsv"
"$annif" train gnd-ebm-en "$here/data/train.tsv"
"$annif" eval gnd-ebm-en "$here/data/test.tsv" --metric F1@5 --metric NDCG \
    --metric NDCG@5 --metric "Precision@1" --metric "Precision@5"
