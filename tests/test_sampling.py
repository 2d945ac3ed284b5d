import numpy as np

from annif_ebm.sampling import choose_documents


def test_zero_means_every_document_with_subjects():
    sample = choose_documents([[1], [], [2, 3], [1]], 0)
    assert sample.selected.tolist() == [True, False, True, True]
    assert (sample.n_documents, sample.n_with_subjects, sample.n_subjects) == (4, 3, 3)
    assert sample.n_covered == 3


def test_half_the_sample_covers_rare_subjects_first_the_rest_is_random():
    # subject 1 is in every document; 2..6 each appear once, late in the corpus
    subjects = [[1]] * 50 + [[1, s] for s in range(2, 7)]
    sample = choose_documents(subjects, 10)
    assert sample.n_selected == 10
    assert sample.selected[50:].all()  # the five documents with rare subjects
    assert sample.selected[:50].sum() == 5  # and five frequent-subject ones
    assert sample.n_covered == 6
    assert "10 of 55 documents" in sample.describe()
    assert "covering 6 of 6 distinct gold subjects" in sample.describe()


def test_coverage_takes_at_most_half_of_the_sample():
    # ten rare subjects, but only two of four slots go to coverage
    subjects = [[1]] * 50 + [[1, s] for s in range(2, 12)]
    sample = choose_documents(subjects, 4)
    assert sample.n_selected == 4
    # the rarest-first greedy takes two rare documents; two random draws from
    # the 58 others may add rare ones by chance, rarely more than one
    assert 2 <= sample.selected[50:].sum() <= 4
    assert sample.selected[50:52].all()  # the first two rare subjects' documents


def test_spare_slots_are_filled_reproducibly_and_never_with_unlabelled_docs():
    subjects = [[1]] * 30 + [[]] * 30
    first = choose_documents(subjects, 10)
    assert first.n_selected == 10
    assert not first.selected[30:].any()
    np.testing.assert_array_equal(first.selected, choose_documents(subjects, 10).selected)


def test_more_slots_than_documents_takes_all():
    sample = choose_documents([[1], [2], []], 10)
    assert sample.selected.tolist() == [True, True, False]


def test_coverage_beats_random_sampling_on_a_long_tail():
    rng = np.random.default_rng(0)
    # Zipf-like gold: a few frequent subjects, many rare ones
    subjects = [list({int(s) for s in rng.zipf(1.6, 2) if s < 5000}) for _ in range(20000)]
    sample = choose_documents(subjects, 1000)
    random_pick = rng.choice(len(subjects), 1000, replace=False)
    random_covered = len({s for i in random_pick for s in subjects[i]})
    assert sample.n_selected == 1000
    assert sample.n_covered > 1.3 * random_covered


def test_knn_documents_beyond_the_sample():
    subjects = [[1], [], [2], [1], [3], [1], []]
    sample = choose_documents(subjects, 2)
    everything = sample.others(0)
    assert not (everything & sample.selected).any()
    assert np.flatnonzero(everything | sample.selected).tolist() == [0, 2, 3, 4, 5]
    capped = sample.others(4)
    assert capped.sum() == 2 and not (capped & sample.selected).any()
    assert not capped[[1, 6]].any()  # never documents without subjects
    np.testing.assert_array_equal(capped, sample.others(4))
    assert sample.others(1).sum() == 0  # the sample alone is already more
