"""`aira-moe prepare-data`: raw domain sources -> LLaMA-Factory alpaca files with leak-free held-out splits.

The source folder has the layout of the CoLA data release plus GSM8K and LawBench (the layout of
`../shared/data`; a user points `--source` at their own copy). Every split is decided by a hash of
the text that identifies an item, so the same question can never sit on both sides, reruns give
the same files, and LawBench facts shared by several tasks (3-1, 3-3, 3-4 reuse the same case)
stay on one side for every task.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Callable, Iterable

GSM8K_TRAIN = "gsm8k/train.jsonl"
GSM8K_MC_TRAIN = "cola/train/gsm8k_train.json"
GSM8K_TEST_CSV = "cola/eval/gsm8k/test/gsm8k_test.csv"
FINEVAL_TRAIN = "cola/train/fineval_train-en.json"
FINEVAL_TEST_DIR = "cola/eval/fineval/test"
GENMED = "cola/train/GenMedGPT-5k.json"
LAWBENCH_DIR = "lawbench/zero_shot"
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRST"
GSM8K_INSTRUCTION = "Solve the following math word problem. End with '#### ' and the final number."

Record = dict[str, str]


def normalised(text: str) -> str:
    """Text compared for leakage: lower case, punctuation and whitespace runs folded to one space."""
    return re.sub(r"[\W_]+", " ", text).strip().lower()


def in_test_split(key: str, test_fraction: float, salt: str) -> bool:
    """Deterministic split by hashing the normalised key, independent of row order."""
    digest = hashlib.sha256(f"{salt}:{normalised(key)}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < test_fraction


def split_by_key(records: list[Record], key: Callable[[Record], str], test_fraction: float, salt: str):
    """(train, test) with every record whose key hashes below `test_fraction` held out."""
    train, test = [], []
    for record in records:
        (test if in_test_split(key(record), test_fraction, salt) else train).append(record)
    return train, test


def read_json(path: Path) -> list[Record]:
    return json.loads(path.read_text(encoding="utf-8-sig"))


def read_csv_rows(path: Path, header: bool = True) -> list[dict[str, str]] | list[list[str]]:
    """CSV rows, tolerating a BOM and the broken UTF-8 sequences of the GSM8K multiple-choice file."""
    text = path.read_bytes().decode("utf-8-sig", errors="replace")
    return list(csv.DictReader(io.StringIO(text))) if header else list(csv.reader(io.StringIO(text)))


def options_text(row: dict[str, str], letters: Iterable[str]) -> str:
    return "\n".join(f"{letter}. {row[letter]}" for letter in letters)


def gsm8k_train(source: Path) -> list[Record]:
    """GSM8K train, worked solutions ending in '#### <number>' (the generative math format)."""
    rows = [json.loads(line) for line in (source / GSM8K_TRAIN).read_text(encoding="utf-8").splitlines() if line]
    return [{"instruction": GSM8K_INSTRUCTION, "input": r["question"], "output": r["answer"]} for r in rows]


def gsm8k_test(source: Path) -> list[Record]:
    """GSM8K test (from the multiple-choice file, whose explanation is the worked solution), same format as train."""
    records = []
    for row in read_csv_rows(source / GSM8K_TEST_CSV):
        value = row[row["answer"].strip()].strip()
        output = f"{row['explanation'].strip()}\n#### {value}"
        records.append({"instruction": GSM8K_INSTRUCTION, "input": row["question"], "output": output, "answer": value})
    return records


def fineval_test(source: Path) -> list[Record]:
    """FinEval-en test as alpaca records (answer like 'C. 17.3'), with the subject kept for per-subject scores."""
    records = []
    for path in sorted((source / FINEVAL_TEST_DIR).glob("*.csv")):
        subject = path.stem
        for row in read_csv_rows(path):
            letter = row["answer"].strip()
            records.append(
                {
                    "instruction": "The following are multiple-choice questions. Please choose the correct answer.",
                    "input": f"{row['question']}\n{options_text(row, 'ABCD')}",
                    "output": f"{letter}. {row[letter]}",
                    "subject": subject,
                }
            )
    return records


def fineval_train(source: Path, test: list[Record]) -> tuple[list[Record], int]:
    """FinEval-en training rows minus those whose question and options equal a `test` item (the known leak)."""
    test_keys = {normalised(record["input"]) for record in test}
    rows = read_json(source / FINEVAL_TRAIN)
    kept = [row for row in rows if normalised(row["input"]) not in test_keys]
    return kept, len(rows) - len(kept)


def lawbench(source: Path) -> list[Record]:
    """All LawBench zero-shot tasks as alpaca records with their task id."""
    records = []
    for path in sorted((source / LAWBENCH_DIR).glob("*.json")):
        for row in read_json(path):
            records.append({"instruction": row["instruction"], "input": row["question"], "output": row["answer"], "task": path.stem})
    return records


def question_text(record: Record) -> str:
    """What identifies an item for leakage: its question, whatever the instruction around it."""
    return record["input"]


def write_records(output: Path, name: str, records: list[Record]) -> int:
    (output / f"{name}.json").write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return len(records)


def prepare(source: Path, output: Path, medicine_test_fraction: float = 0.05, law_test_fraction: float = 0.2) -> dict:
    """Write every prepared file into `output`; return (and write as prepared.json) the row counts."""
    missing = [p for p in (GSM8K_TRAIN, GSM8K_TEST_CSV, FINEVAL_TRAIN, GENMED, LAWBENCH_DIR) if not (source / p).exists()]
    if missing:
        raise FileNotFoundError(f"--source {source}: missing {', '.join(missing)} (expected the layout of ../shared/data)")
    output.mkdir(parents=True, exist_ok=True)
    fineval_held_out = fineval_test(source)
    fineval_rows, fineval_leaked = fineval_train(source, fineval_held_out)
    genmed_train, genmed_test = split_by_key(read_json(source / GENMED), question_text, medicine_test_fraction, "genmedgpt")
    law_train, law_test = split_by_key(lawbench(source), question_text, law_test_fraction, "lawbench")
    splits = {
        "gsm8k_train": gsm8k_train(source),
        "gsm8k_test": gsm8k_test(source),
        "gsm8k_mc_train": read_json(source / GSM8K_MC_TRAIN),
        "fineval_en_train": fineval_rows,
        "fineval_en_test": fineval_held_out,
        "genmedgpt_train": genmed_train,
        "genmedgpt_test": genmed_test,
        "lawbench_train": law_train,
        "lawbench_test": law_test,
    }
    counts = {name: write_records(output, name, records) for name, records in splits.items()}
    manifest = {"source": str(source), "rows": counts, "fineval_train_rows_removed_as_test_duplicates": fineval_leaked}
    (output / "prepared.json").write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return manifest
