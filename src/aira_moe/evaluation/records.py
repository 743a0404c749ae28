"""The records a generative or NLL task scores, read as benchmarks publish them, checked before the model loads.

Accepted: an alpaca JSON list (`instruction`, `input`, `output`; what `aira-moe prepare-data` writes),
or JSON lines; GSM8K's own JSON lines (`question`, `answer` ending in `#### <number>`) become the
prepared format. A malformed file gets one line naming the file, the line or row, and the fields
expected.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import AiraMoeError
from ..prepare_data import GSM8K_INSTRUCTION

ALPACA_FIELDS = ("instruction", "output")
GSM8K_FIELDS = ("question", "answer")


def read_rows(path: Path) -> list[tuple[str, object]]:
    """(where, row) for every record of a JSON list or JSON-lines file."""
    text = path.read_text(encoding="utf-8-sig")
    if text.lstrip().startswith("["):
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as error:
            raise AiraMoeError(f"{path}: not valid JSON at line {error.lineno} column {error.colno} ({error.msg})") from None
        return [(f"{path} record {n + 1}", row) for n, row in enumerate(rows)]
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append((f"{path} line {number}", json.loads(line)))
        except json.JSONDecodeError as error:
            raise AiraMoeError(f"{path} line {number}: not a JSON object ({error.msg}); expected one record per line") from None
    return rows


def from_gsm8k(row: dict, where: str) -> dict:
    """GSM8K's published row as the prepared record: the worked solution is the output, its final number the answer."""
    if "####" not in row["answer"]:
        raise AiraMoeError(f"{where}: GSM8K's `answer` must end in '#### <number>', got {row['answer'][-40:]!r}")
    return {"instruction": GSM8K_INSTRUCTION, "input": row["question"], "output": row["answer"],
            "answer": row["answer"].rsplit("####", 1)[1].strip()}


def load_records(path: Path, task: str) -> list[dict]:
    """Records with `instruction`, `input`, `output` (and `answer` for gsm8k, `task` for lawbench)."""
    required = {"gsm8k": ("answer",), "lawbench": ("task",)}.get(task, ())
    records = []
    for where, row in read_rows(path):
        if isinstance(row, dict) and task == "gsm8k" and all(k in row for k in GSM8K_FIELDS) and "output" not in row:
            row = from_gsm8k(row, where)
        expected = ALPACA_FIELDS + required
        if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in expected):
            also = " (or GSM8K's question, answer)" if task == "gsm8k" else ""
            got = sorted(row) if isinstance(row, dict) else type(row).__name__
            raise AiraMoeError(f"{where}: expected text fields {', '.join(expected)}{also}; got {got}")
        records.append(row)
    if not records:
        raise AiraMoeError(f"{path}: no records")
    return records
