"""Recreate the bundled example data from the tibcore-en corpus.

Source: TIBKAT title+abstract records with GND subjects from the SemEval-2025
Task 5 "LLMs4Subjects" shared task (tib-core split), English GND labels.
GND is CC0 1.0. Usage: python examples/make_sample.py ../shared/data/tibcore-en
"""

import random
import sys
from pathlib import Path

N_TRAIN, N_TEST, N_EXTRA_SUBJECTS = 600, 200, 6000


def main(source: Path, target: Path) -> None:
    train = (source / "train.tsv").read_text(encoding="utf-8").splitlines()[:N_TRAIN]
    test = (source / "validate.tsv").read_text(encoding="utf-8").splitlines()[:N_TEST]
    vocab = (source / "gnd-core-en.tsv").read_text(encoding="utf-8").splitlines()
    used = {uri.strip("<>") for line in train + test for uri in line.split("\t")[1].split()}
    rng = random.Random(42)
    others = [line for line in vocab if line.split("\t")[0].strip("<>") not in used]
    extra = set(rng.sample(others, N_EXTRA_SUBJECTS))
    sample = [line for line in vocab if line.split("\t")[0].strip("<>") in used or line in extra]
    target.mkdir(parents=True, exist_ok=True)
    (target / "gnd-sample.tsv").write_text("\n".join(sample) + "\n", encoding="utf-8")
    (target / "train.tsv").write_text("\n".join(train) + "\n", encoding="utf-8")
    (target / "test.tsv").write_text("\n".join(test) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent / "data")
