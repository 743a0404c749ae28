"""The tokenizer rebuilt from a GGUF's SentencePiece vocabulary (Gemma 3's case) encodes as SentencePiece does.

The GGUF here is written the way llama.cpp converts a SentencePiece BPE model (whitespace-run user-defined
pieces spelt with spaces), from a small model SentencePiece trains in the test, so the reference is
SentencePiece's own encoder on that model, not our reading of it.
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from aira_moe.errors import AiraMoeError
from aira_moe.gguf_tokenizer import SPACE, build_tokenizer, read_vocabulary, sentencepiece_processor

CORPUS = ["The quick brown fox jumps over the lazy dog.", "Question: what is 12 + 30?\n\nAnswer: 42",
          "def f(x):\n    return x  *  2", "Patients with fever  and cough", "法律 条款 第十二条", "<code>print(1)</code>"]
USER_DEFINED = (SPACE * 2, SPACE * 4, "\n", "\n\n", "<code>")
PROBES = ["a  b", "x    y   z", "line\n\nnext\n", "<code>z</code>", "ünïcödé 🙂 漢字", "The lazy fox's 1234 dogs.",
          " leading and trailing ", "tab\tand\t\ttabs", "Answer: 42\n\n\nDone", "cough  fever    x"]


def trained_sentencepiece():
    import sentencepiece

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 50), model_writer=model, vocab_size=400, model_type="bpe", byte_fallback=True,
        add_dummy_prefix=False, remove_extra_whitespaces=False, normalization_rule_name="identity",
        allow_whitespace_only_pieces=True, user_defined_symbols=list(USER_DEFINED),
        control_symbols=["<start_of_turn>", "<end_of_turn>"], pad_id=0, eos_id=1, bos_id=2, unk_id=3,
        character_coverage=1.0, split_digits=True, minloglevel=2)
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())


def piece_type(processor, index: int) -> int:
    """SentencePiece's piece type (the numbering GGUF's token_type uses)."""
    if processor.is_byte(index):
        return 6
    if processor.is_control(index):
        return 3
    if processor.is_unknown(index):
        return 2
    return 4 if processor.id_to_piece(index) in USER_DEFINED else 1


def write_gguf(path: Path, processor, tokenizer_model: str = "llama") -> Path:
    from gguf import GGUFWriter

    pieces = [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    types = [piece_type(processor, i) for i in range(len(pieces))]
    spelt = [piece.replace(SPACE, " ") if kind == 4 and not piece.strip(SPACE) else piece for piece, kind in zip(pieces, types)]
    writer = GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model(tokenizer_model)
    writer.add_token_list(spelt)
    writer.add_token_scores([processor.get_score(i) for i in range(len(pieces))])
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(False)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def reference():
    return trained_sentencepiece()


def test_rebuilt_tokenizer_encodes_as_sentencepiece_and_survives_saving(tmp_path, reference):
    from transformers import AutoTokenizer

    vocab = read_vocabulary(write_gguf(tmp_path / "tiny.gguf", reference))
    assert vocab.tokens[6] == SPACE * 2, "the space-spelt user-defined piece is read back as SentencePiece wrote it"
    tokenizer = build_tokenizer(vocab)
    tokenizer.save_pretrained(tmp_path / "saved")
    reloaded = AutoTokenizer.from_pretrained(tmp_path / "saved")
    ours = sentencepiece_processor(vocab)
    for text in PROBES:
        expected = reference.encode(text)
        assert ours.encode(text) == expected, text
        assert tokenizer(text, add_special_tokens=False)["input_ids"] == expected, text
        assert reloaded(text)["input_ids"] == [2, *expected], f"reloaded without bos or merges: {text!r}"
        assert reloaded.decode(expected) == text
    turn = tokenizer("<start_of_turn>a  b<end_of_turn>", add_special_tokens=False)["input_ids"]
    assert turn == [reference.piece_to_id("<start_of_turn>"), *reference.encode("a  b"), reference.piece_to_id("<end_of_turn>")]


def test_a_vocabulary_of_another_kind_is_refused(tmp_path, reference):
    with pytest.raises(AiraMoeError, match="tokenizer.ggml.model is 'gpt2'"):
        read_vocabulary(write_gguf(tmp_path / "bpe.gguf", reference, tokenizer_model="gpt2"))
