"""Generative GSM8K: the number a greedy reply commits to, compared with the reference value.

Extraction: the number after the last '####' when the reply uses GSM8K's format (what training
teaches), else after 'answer is', else the last number in the reply. Thousands separators,
currency signs and a trailing period are dropped; values compare numerically (so 18 == 18.00).
"""

from __future__ import annotations

import re

NUMBER = re.compile(r"-?\$?\d[\d,]*(?:\.\d+)?")


def parse_number(text: str) -> float | None:
    cleaned = text.replace("$", "").replace(",", "").rstrip(".")
    try:
        return float(cleaned)
    except ValueError:
        return None


def extract_answer(reply: str) -> float | None:
    for marker in ("####", "answer is"):
        if marker in reply:
            found = NUMBER.findall(reply.rsplit(marker, 1)[1])
            if found:
                return parse_number(found[0])
    found = NUMBER.findall(reply)
    return parse_number(found[-1]) if found else None


def is_correct(reply: str, reference: str) -> bool:
    predicted, expected = extract_answer(reply), parse_number(reference.strip())
    return predicted is not None and expected is not None and abs(predicted - expected) < 1e-6


def score_replies(replies: list[str], references: list[str]) -> dict:
    correct = [is_correct(r, a) for r, a in zip(replies, references)]
    return {"accuracy": sum(correct) / len(correct), "n": len(correct)}
