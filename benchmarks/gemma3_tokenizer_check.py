"""Check the rebuilt Gemma-3-270M tokenizer against SentencePiece on the study's real text.

Encodes a seeded sample of rows of every prepared training file (instruction, input and output
joined as the alpaca format gives them) plus whitespace, code and byte-fallback probes, with
(a) SentencePiece built from the GGUF's own vocabulary, scores and piece types, (b) the rebuilt
tokenizer, (c) that tokenizer saved and reloaded from the converted checkpoint, and (d)
transformers' own GGUF conversion for contrast. Writes the counts and the first mismatches.

    python benchmarks/gemma3_tokenizer_check.py --data-dir data --rows 200 --output results/gemma3_tokenizer.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

PROBES = ["Hello  world", "def f(x):\n    return x**2\n\n\n", "tab\tand\t\ttabs", "Ünïcödé 漢字 テスト 🙂",
          "<code>x = 1</code>", " leading and trailing ", "a\u00a0non-breaking space", "12345678901234567890"]
DATASETS = ["gsm8k_train", "fineval_en_train", "genmedgpt_train", "lawbench_train"]


def sample_texts(data_dir: Path, rows: int, seed: int) -> dict[str, list[str]]:
    texts = {"probes": PROBES}
    for name in DATASETS:
        records = json.loads((data_dir / f"{name}.json").read_text())
        chosen = random.Random(seed).sample(records, min(rows, len(records)))
        texts[name] = ["\n\n".join(part for part in (r.get("instruction"), r.get("input"), r.get("output")) if part) for r in chosen]
    return texts


def without_bos(ids: list[int], bos_id: int) -> list[int]:
    """The ids after the leading <bos> the checkpoint's tokenizer must add; a missing <bos> counts as a mismatch."""
    return ids[1:] if ids[:1] == [bos_id] else [-1, *ids]


def compare(reference, encoders: dict, texts: dict[str, list[str]]) -> dict:
    report = {name: {"strings": 0, "tokens": 0, "mismatches": 0, "examples": []} for name in encoders}
    for source, strings in texts.items():
        for text in strings:
            expected = reference.encode(text)
            for name, encode in encoders.items():
                got = encode(text)
                entry = report[name]
                entry["strings"] += 1
                entry["tokens"] += len(expected)
                if got != expected:
                    entry["mismatches"] += 1
                    if len(entry["examples"]) < 3:
                        entry["examples"].append({"source": source, "text": text[:120], "expected": expected[:24], "got": got[:24]})
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--rows", type=int, default=200, help="Rows sampled from each training file.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    from transformers import AutoTokenizer

    from aira_moe.gemma3 import gemma3_checkpoint, gemma3_gguf
    from aira_moe.gguf_tokenizer import build_tokenizer, read_vocabulary, sentencepiece_processor

    started = time.time()
    source = gemma3_gguf()
    vocab = read_vocabulary(source)
    rebuilt, reloaded = build_tokenizer(vocab), AutoTokenizer.from_pretrained(gemma3_checkpoint())
    stock = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    encoders = {
        "rebuilt": lambda text: rebuilt(text, add_special_tokens=False)["input_ids"],
        "reloaded_checkpoint": lambda text: without_bos(reloaded(text)["input_ids"], vocab.bos_id),
        "transformers_gguf_conversion": lambda text: stock(text, add_special_tokens=False)["input_ids"],
    }
    texts = sample_texts(args.data_dir, args.rows, args.seed)
    report = {
        "gguf": source.name,
        "vocabulary": len(vocab.tokens),
        "reference": "sentencepiece BPE built from the GGUF's tokens, scores and token types",
        "rows_per_dataset": args.rows,
        "seed": args.seed,
        "reloaded_adds_bos": reloaded("x")["input_ids"][0] == vocab.bos_id,
        "results": compare(sentencepiece_processor(vocab), encoders, texts),
        "seconds": round(time.time() - started, 1),
        "command": f"python benchmarks/gemma3_tokenizer_check.py --data-dir {args.data_dir} --rows {args.rows} --seed {args.seed} --output {args.output}",
    }
    args.output.write_text(json.dumps(report, indent=1, ensure_ascii=False) + "\n")
    for name, entry in report["results"].items():
        print(f"{name}: {entry['mismatches']} of {entry['strings']} strings differ ({entry['tokens']} reference tokens)")


if __name__ == "__main__":
    main()
