"""`aira-moe prepare-data` on the shared raw data: row counts, leak-free splits, the committed registry."""

from __future__ import annotations

import csv
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from aira_moe.prepare_data import normalised, split_by_key
from conftest import REPO, SHARED_DATA

needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")


def rows(folder: Path, name: str) -> list[dict]:
    return json.loads((folder / f"{name}.json").read_text(encoding="utf-8"))


def questions(records: list[dict]) -> set[str]:
    return {normalised(r["input"]) for r in records}


@needs_shared
def test_row_counts_follow_the_sources(prepared_data):
    gsm8k_lines = [l for l in (SHARED_DATA / "gsm8k/train.jsonl").read_text().splitlines() if l]
    gsm8k_csv = (SHARED_DATA / "cola/eval/gsm8k/test/gsm8k_test.csv").read_bytes().decode("utf-8", "replace")
    genmed = json.loads((SHARED_DATA / "cola/train/GenMedGPT-5k.json").read_text())
    fineval_train = json.loads((SHARED_DATA / "cola/train/fineval_train-en.json").read_text())
    fineval_test = sum(
        len(list(csv.DictReader(p.open(encoding="utf-8-sig")))) for p in (SHARED_DATA / "cola/eval/fineval/test").glob("*.csv")
    )
    manifest = json.loads((prepared_data / "prepared.json").read_text())
    assert len(rows(prepared_data, "gsm8k_train")) == len(gsm8k_lines)
    assert len(rows(prepared_data, "gsm8k_test")) == len(list(csv.DictReader(gsm8k_csv.splitlines())))
    assert len(rows(prepared_data, "fineval_en_test")) == fineval_test
    removed = manifest["fineval_train_rows_removed_as_test_duplicates"]
    assert len(rows(prepared_data, "fineval_en_train")) == len(fineval_train) - removed
    assert 6 <= removed <= 10, "the shared README documents 6 leaked test items (7 training rows)"
    assert len(rows(prepared_data, "genmedgpt_train")) + len(rows(prepared_data, "genmedgpt_test")) == len(genmed)
    assert 150 <= len(rows(prepared_data, "genmedgpt_test")) <= 400


@needs_shared
def test_held_out_splits_share_no_question_with_training(prepared_data):
    for train, test in [
        ("gsm8k_train", "gsm8k_test"),
        ("fineval_en_train", "fineval_en_test"),
        ("genmedgpt_train", "genmedgpt_test"),
        ("lawbench_train", "lawbench_test"),
    ]:
        overlap = questions(rows(prepared_data, train)) & questions(rows(prepared_data, test))
        assert not overlap, f"{train} and {test} share {len(overlap)} questions"
    fineval_test_keys = {normalised(r["input"].replace("\n", " ")) for r in rows(prepared_data, "fineval_en_test")}
    assert not questions(rows(prepared_data, "fineval_en_train")) & fineval_test_keys


@needs_shared
def test_lawbench_is_split_within_every_task(prepared_data):
    train = Counter(r["task"] for r in rows(prepared_data, "lawbench_train"))
    test = Counter(r["task"] for r in rows(prepared_data, "lawbench_test"))
    tasks = {p.stem for p in (SHARED_DATA / "lawbench/zero_shot").glob("*.json")}
    assert set(train) == set(test) == tasks
    for task in tasks:
        assert train[task] + test[task] == len(json.loads((SHARED_DATA / f"lawbench/zero_shot/{task}.json").read_text()))
        assert 0.1 < test[task] / (train[task] + test[task]) < 0.3, task


@needs_shared
def test_committed_registry_names_every_prepared_file(prepared_data):
    registry = json.loads((REPO / "data" / "dataset_info.json").read_text())
    local = {name: entry["file_name"] for name, entry in registry.items() if "file_name" in entry}
    produced = {p.name for p in prepared_data.glob("*.json")} - {"prepared.json", "dataset_info.json"}  # the fixture copies the registry in
    assert set(local.values()) == produced
    for name, entry in registry.items():
        assert ("file_name" in entry) != ("hf_hub_url" in entry), name


def test_split_ignores_row_order_and_formatting():
    records = [{"input": f"Question {i}?"} for i in range(400)]
    shuffled = random.Random(1).sample(records, len(records))
    reformatted = [{"input": r["input"].upper().replace("?", " ? ")} for r in records]
    held_out = {r["input"] for r in split_by_key(records, lambda r: r["input"], 0.2, "s")[1]}
    assert held_out == {r["input"] for r in split_by_key(shuffled, lambda r: r["input"], 0.2, "s")[1]}
    assert len(split_by_key(reformatted, lambda r: r["input"], 0.2, "s")[1]) == len(held_out)
    assert 40 < len(held_out) < 120
