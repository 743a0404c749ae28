"""A fast tokenizer rebuilt from a GGUF's SentencePiece vocabulary (Gemma 3's, for one).

transformers 5.6.0's GGUF conversion of Gemma's tokenizer is wrong three ways: it builds a Unigram
model from what are BPE merge scores, drops `add_bos_token`, and the saved tokenizer reloads with
no merges. The GGUF holds everything SentencePiece's BPE needs (pieces, scores, piece types), so
the tokenizer is rebuilt from them: merges ranked by the score of the piece they make (SentencePiece
merges the highest-scoring pair first), user-defined and control pieces as added tokens, bytes as
fallback. `sentencepiece_processor` builds SentencePiece itself from the same fields: the reference
the rebuilt tokenizer is checked against.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .errors import AiraMoeError

# GGUF token types, numbered as SentencePiece's piece types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
SPACE = "\u2581"  # SentencePiece's visible space


@dataclass(frozen=True)
class SentencePieceVocabulary:
    tokens: list[str]
    scores: list[float]
    types: list[int]
    bos_id: Optional[int]
    eos_id: Optional[int]
    unk_id: Optional[int]
    pad_id: Optional[int]
    add_bos: bool
    add_eos: bool


def _scalar(reader: Any, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _array(reader: Any, key: str) -> list:
    """An array field's values, read from its parts directly (`contents()` takes half a minute on 262k tokens)."""
    field = reader.fields[key]
    return [field.parts[index] for index in field.data]


def read_vocabulary(path: Path) -> SentencePieceVocabulary:
    """The SentencePiece vocabulary stored in a GGUF file; refuses vocabularies of another kind."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    model = _scalar(reader, "tokenizer.ggml.model")
    if model != "llama":
        raise AiraMoeError(f"{path.name}: tokenizer.ggml.model is {model!r}; only SentencePiece ('llama') vocabularies are rebuilt")
    if _scalar(reader, "tokenizer.ggml.add_space_prefix", False):
        raise AiraMoeError(f"{path.name}: tokenizer.ggml.add_space_prefix is true; only vocabularies without a dummy prefix (Gemma's) are rebuilt")
    types = [int(part[0]) for part in _array(reader, "tokenizer.ggml.token_type")]
    tokens = [bytes(part).decode("utf-8") for part in _array(reader, "tokenizer.ggml.tokens")]
    # llama.cpp's converter spells whitespace-run user-defined pieces ("▁▁") with plain spaces; undo it.
    tokens = [token.replace(" ", SPACE) if kind == USER_DEFINED and not token.strip(" ") else token
              for token, kind in zip(tokens, types)]
    return SentencePieceVocabulary(
        tokens=tokens,
        scores=[float(part[0]) for part in _array(reader, "tokenizer.ggml.scores")],
        types=types,
        bos_id=_scalar(reader, "tokenizer.ggml.bos_token_id"),
        eos_id=_scalar(reader, "tokenizer.ggml.eos_token_id"),
        unk_id=_scalar(reader, "tokenizer.ggml.unknown_token_id"),
        pad_id=_scalar(reader, "tokenizer.ggml.padding_token_id"),
        add_bos=bool(_scalar(reader, "tokenizer.ggml.add_bos_token", False)),
        add_eos=bool(_scalar(reader, "tokenizer.ggml.add_eos_token", False)),
    )


def _special(vocab: SentencePieceVocabulary) -> dict[str, str]:
    names = {"bos_token": vocab.bos_id, "eos_token": vocab.eos_id, "unk_token": vocab.unk_id, "pad_token": vocab.pad_id}
    return {name: vocab.tokens[index] for name, index in names.items() if index is not None}


def build_tokenizer(vocab: SentencePieceVocabulary) -> Any:
    """A `GemmaTokenizer` (SentencePiece BPE, byte fallback, no dummy prefix) equal to SentencePiece on `vocab`."""
    from tokenizers import AddedToken
    from transformers.models.gemma.tokenization_gemma import GemmaTokenizer
    from transformers.tokenization_utils_base import generate_merges

    ids = {token: index for index, token in enumerate(vocab.tokens)}
    normal = {token: score for token, score, kind in zip(vocab.tokens, vocab.scores, vocab.types) if kind == NORMAL}
    not_mergeable = {token for token, kind in zip(vocab.tokens, vocab.types) if kind != NORMAL}
    merges = generate_merges(ids, normal, skip_tokens=not_mergeable)
    tokenizer = GemmaTokenizer(vocab=ids, merges=merges, add_bos_token=vocab.add_bos, add_eos_token=vocab.add_eos,
                               **_special(vocab))
    # SentencePiece matches user-defined pieces in the normalised text (spaces already "▁"), control pieces never in text;
    # chat templates write control pieces (<start_of_turn>) as text, so they become special tokens.
    tokenizer.add_tokens([AddedToken(token, special=kind == CONTROL, normalized=kind == USER_DEFINED and SPACE in token)
                          for token, kind in zip(vocab.tokens, vocab.types) if kind in (CONTROL, USER_DEFINED)])
    return tokenizer


def sentencepiece_processor(vocab: SentencePieceVocabulary) -> Any:
    """SentencePiece's own BPE encoder on `vocab`: the reference for `build_tokenizer`."""
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2 as model_pb2

    proto = model_pb2.ModelProto()
    proto.trainer_spec.model_type = model_pb2.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    proto.trainer_spec.vocab_size = len(vocab.tokens)
    for field, index in (("bos_id", vocab.bos_id), ("eos_id", vocab.eos_id), ("unk_id", vocab.unk_id), ("pad_id", vocab.pad_id)):
        setattr(proto.trainer_spec, field, -1 if index is None else index)
    proto.normalizer_spec.name = "identity"
    proto.normalizer_spec.add_dummy_prefix = False
    proto.normalizer_spec.remove_extra_whitespaces = False
    proto.normalizer_spec.escape_whitespaces = True
    for token, score, kind in zip(vocab.tokens, vocab.scores, vocab.types):
        proto.pieces.add(piece=token, score=score, type=kind)
    return sentencepiece.SentencePieceProcessor(model_proto=proto.SerializeToString())
