from annif_ebm.chunking import Chunker, clean_text, sentence_tokenizer


def test_sentences_are_split_with_abbreviations_known():
    sentences = sentence_tokenizer("en").tokenize("Dr. Smith went home. He was tired.")
    assert sentences == ["Dr. Smith went home.", "He was tired."]


def test_german_model_is_used_for_de():
    text = "Das ist z.B. ein Satz. Und noch einer."
    assert len(sentence_tokenizer("de").tokenize(text)) == 2


def test_sentences_are_packed_up_to_the_length():
    text = "One two. Three four. Five six. " * 10
    chunks = Chunker("en", 40, 100).chunk(text)
    assert all(len(chunk) <= 40 for chunk in chunks)
    assert chunks[0] == "One two. Three four. Five six. One two."
    assert " ".join(chunks) == " ".join(text.split())


def test_long_sentence_is_wrapped_at_spaces():
    text = " ".join(["word"] * 100)
    chunks = Chunker("en", 50, 100).chunk(text)
    assert all(len(c) <= 50 for c in chunks)
    assert all(set(c.split()) == {"word"} for c in chunks)


def test_one_huge_word_is_cut_and_bounded():
    chunks = Chunker("en", 100, 30).chunk("x" * 120_000)
    assert len(chunks) == 30
    assert all(len(c) == 100 for c in chunks)


def test_max_chunks_keeps_the_beginning():
    text = " ".join(f"Sentence number {i}." for i in range(500))
    chunks = Chunker("en", 30, 5).chunk(text)
    assert len(chunks) == 5
    assert chunks[0].startswith("Sentence number 0.")


def test_empty_and_contentless_documents_give_no_chunks():
    chunker = Chunker("en", 100, 10)
    for text in ["", "   \n\t ", "!!! ... ???", "\x00\x01"]:
        assert chunker.chunk(text) == []
    assert chunker.chunk("word") == ["word"]


def test_control_characters_and_lone_surrogates_are_removed():
    assert clean_text("a\x00b\x1fc\ud800d") == "a b c d"
    chunks = Chunker("en", 200, 10).chunk("Hello\x00 world. Привет мир. 你好世界。")
    assert chunks == ["Hello world. Привет мир. 你好世界。"]


def test_unknown_language_still_splits():
    chunks = Chunker("xx", 20, 10).chunk("First sentence here. Second one here.")
    assert chunks == ["First sentence here.", "Second one here."]
