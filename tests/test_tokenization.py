"""MMAVSRTokenizer: auto_avsr's id assignment, round trips, a freshly trained vocabulary, save/load."""

import pytest
import sentencepiece as spm

from mmavsr_processing.tokenization_mmavsr import AUTO_AVSR_ASSETS, MMAVSRTokenizer


LRS3_LIKE = [
    "AND THAT'S WHAT WE DID",
    "I THINK THE MOST IMPORTANT THING IS TO LISTEN",
    "SO IN 1998 WE STARTED A COMPANY",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "WELL IT'S NOT THAT SIMPLE",
]


@pytest.fixture(scope="module")
def tokenizer():
    return MMAVSRTokenizer.from_auto_avsr()


def test_special_ids_follow_auto_avsr(tokenizer):
    assert tokenizer.vocab_size == len(tokenizer) == 5049
    assert tokenizer.convert_ids_to_tokens(0) == "<blank>" and tokenizer.pad_token_id == 0
    assert tokenizer.unk_token_id == 1
    assert tokenizer.bos_token_id == tokenizer.eos_token_id == 5048
    assert tokenizer.convert_ids_to_tokens(5048) == "<sos/eos>"


def test_every_units_line_maps_to_its_number(tokenizer):
    lines = (AUTO_AVSR_ASSETS / "unigram5000_units.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 5047
    for line in lines:
        piece, number = line.split()
        assert tokenizer.convert_tokens_to_ids(piece) == int(number)
        assert tokenizer.convert_ids_to_tokens(int(number)) == piece


def test_ids_match_auto_avsr_text_transform(tokenizer):
    """auto_avsr: SentencePiece pieces looked up in the units file, unknown pieces -> the id of <unk>."""
    model = spm.SentencePieceProcessor(model_file=str(AUTO_AVSR_ASSETS / "unigram5000.model"))
    units = dict(
        line.split() for line in (AUTO_AVSR_ASSETS / "unigram5000_units.txt").read_text(encoding="utf-8").splitlines()
    )
    for text in [*LRS3_LIKE, "ÉCOLE NAÏVE"]:
        expected = [int(units.get(piece, units["<unk>"])) for piece in model.encode(text, out_type=str)]
        assert tokenizer.encode(text, add_special_tokens=False) == expected
        assert tokenizer.encode(text) == expected + [5048]


def test_encode_decode_round_trip(tokenizer):
    batch = tokenizer(LRS3_LIKE)
    assert all(ids[-1] == tokenizer.eos_token_id for ids in batch["input_ids"])
    assert tokenizer.batch_decode(batch["input_ids"], skip_special_tokens=True) == LRS3_LIKE
    assert tokenizer.decode(batch["input_ids"][0]) == LRS3_LIKE[0] + "<sos/eos>"
    # lower case is upper-cased first (auto_avsr's pieces are upper case)
    assert tokenizer.decode(tokenizer.encode("hello world"), skip_special_tokens=True) == "HELLO WORLD"


def test_padding_uses_blank(tokenizer):
    batch = tokenizer(["HI", "A MUCH LONGER SENTENCE HERE"], padding=True)
    short = batch["input_ids"][0]
    assert short[-1] == 0 and batch["attention_mask"][0][-1] == 0


def test_save_and_load_round_trip(tokenizer, tmp_path):
    tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "spm.model").is_file() and (tmp_path / "spm_units.txt").is_file()
    loaded = MMAVSRTokenizer.from_pretrained(tmp_path)
    assert loaded.vocab_size == 5049
    for text in LRS3_LIKE:
        assert loaded.encode(text) == tokenizer.encode(text)


def test_train_new_vocabulary(tmp_path):
    words = "BIN LAY PLACE SET BLUE GREEN RED WHITE AT BY IN WITH AGAIN NOW PLEASE SOON".split()
    corpus = [" ".join(words[(i + k) % len(words)] for k in range(6)) for i in range(200)]
    trained = MMAVSRTokenizer.train_vocabulary(corpus, tmp_path / "vocab", vocab_size=30)
    model_file, units_file = tmp_path / "vocab" / "unigram30.model", tmp_path / "vocab" / "unigram30_units.txt"
    assert model_file.is_file() and units_file.is_file()
    units = units_file.read_text(encoding="utf-8").splitlines()
    assert units[0] == "<unk> 1"
    assert [int(line.split()[1]) for line in units] == list(range(1, len(units) + 1))
    assert trained.vocab_size == len(units) + 2 == 30 + 2  # SentencePiece pieces (with <unk>) + blank + sos/eos
    sentence = "PLACE RED AT NOW PLEASE"
    ids = trained.encode(sentence)
    assert trained.unk_token_id not in ids
    assert trained.decode(ids, skip_special_tokens=True) == sentence

    reloaded = MMAVSRTokenizer(vocab_file=str(model_file), units_file=str(units_file))
    assert reloaded.encode(sentence) == ids
    trained.save_pretrained(tmp_path / "saved")
    assert MMAVSRTokenizer.from_pretrained(tmp_path / "saved").encode(sentence) == ids


def test_bad_units_file_names_the_line(tmp_path):
    units = tmp_path / "units.txt"
    units.write_text("<unk> 1\nA 3\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"units.txt:2: id 3 is not the line number 2"):
        MMAVSRTokenizer(vocab_file=str(AUTO_AVSR_ASSETS / "unigram5000.model"), units_file=str(units))


def test_empty_corpus_or_oversized_vocabulary_is_refused(tmp_path):
    with pytest.raises(ValueError, match="corpus is empty"):
        MMAVSRTokenizer.train_vocabulary(["", "  "], tmp_path)
    with pytest.raises(ValueError, match="Vocabulary size too high"):
        MMAVSRTokenizer.train_vocabulary(["AB BA"] * 10, tmp_path, vocab_size=500)
