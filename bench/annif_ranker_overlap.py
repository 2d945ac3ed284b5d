"""``annif`` with the fine-tuning documents also in the ranker's sample: the
"overlap" variant that issue 19 compares with the split (the default, where
the ranker never learns from documents the embedding model was tuned on).
An experiment, not a setting of the backend.

  ANNIF_PROJECTS=... ANNIF_DATADIR=... python bench/annif_ranker_overlap.py train PROJECT TRAIN.tsv

then suggest and score as for any project (bench/annif_predict.py, bench/metrics.py).
"""

import dataclasses
import sys

import annif_ebm.training as training

split_sample = training.choose_documents


def overlapping_sample(*args, **kwargs):
    """The default sample, with the tuning documents added to the ranker's."""
    sample = split_sample(*args, **kwargs)
    if sample.tuning is None:
        return sample
    return dataclasses.replace(sample, selected=sample.selected | sample.tuning)


training.choose_documents = overlapping_sample

if __name__ == "__main__":
    from annif.cli import cli

    sys.exit(cli())
