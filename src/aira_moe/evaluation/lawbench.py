"""LawBench scoring for its accuracy and F1 tasks, with extraction rules per answer type.

- choice (1-2, 3-6: A-D; 2-8: A-E): the option letters inside `[正确答案]...<eoa>` (or after
  `正确答案`, or anywhere); right only when exactly the gold letter is given.
- single label (2-4): the label set is every gold label of the task; the first label the reply
  names must be the gold one.
- multi-label F1 (2-2, 2-3, 2-9, 3-3): gold labels are the answer after its `类别:`-style prefix,
  split on 、;；,，; predicted labels are the task's known labels found in the reply (longest
  first, without overlaps); F1 per item, averaged.
- articles F1 (3-1): the sets of article numbers `第N条`.
- amount accuracy (3-7): the first number in `[金额]...<eoa>` (or the reply) equals the gold amount.
Generation, extraction and regression tasks (ROUGE, soft-F1, log-distance) are not scored.
"""

from __future__ import annotations

import re
from typing import Callable

from ..errors import AiraMoeError

CHOICES = {"1-2": "ABCD", "3-6": "ABCD", "2-8": "ABCDE"}
SINGLE_LABEL = ("2-4",)
MULTI_LABEL = ("2-2", "2-3", "2-9", "3-3")
ARTICLES = ("3-1",)
AMOUNT = ("3-7",)
SCORED_TASKS = tuple(sorted([*CHOICES, *SINGLE_LABEL, *MULTI_LABEL, *ARTICLES, *AMOUNT]))
SEPARATORS = re.compile(r"[、;；,，\s]+")
NUMBER = re.compile(r"\d+(?:\.\d+)?")


def answer_region(text: str, tag: str) -> str:
    """The part of a reply that holds the answer: `[tag]...<eoa>`, else after `tag`, else all of it."""
    bracketed = re.search(rf"\[{tag}\](.*?)(?:<eoa>|$)", text, flags=re.S)
    if bracketed:
        return bracketed.group(1)
    return text.split(tag, 1)[1] if tag in text else text


def choice_letters(text: str, allowed: str) -> set[str]:
    return set(re.findall(f"[{allowed}]", answer_region(text, "正确答案")))


def gold_labels(answer: str) -> list[str]:
    """'类别:婚后有子女、限制行为能力子女抚养。' -> ['婚后有子女', '限制行为能力子女抚养']."""
    body = re.split(r"[:：]", answer, maxsplit=1)[-1]
    body = re.sub(r"<eoa>|\[|\]|。", "", body)
    return [label for label in SEPARATORS.split(body) if label]


def found_labels(reply: str, vocabulary: set[str]) -> list[str]:
    """Known labels named in the reply, in order of appearance; longer labels claim their text first."""
    taken = [False] * len(reply)
    hits = []
    for label in sorted(vocabulary, key=lambda l: (-len(l), l)):
        for match in re.finditer(re.escape(label), reply):
            span = range(match.start(), match.end())
            if not any(taken[i] for i in span):
                for i in span:
                    taken[i] = True
                hits.append((match.start(), label))
    return [label for _, label in sorted(hits)]


def f1(predicted: set, gold: set) -> float:
    overlap = len(predicted & gold)
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(predicted), overlap / len(gold)
    return 2 * precision * recall / (precision + recall)


def first_number(text: str) -> float | None:
    found = NUMBER.findall(answer_region(text, "金额").replace(",", ""))
    return float(found[0]) if found else None


def same_amount(reply: str, gold: str) -> bool:
    predicted = first_number(reply)
    return predicted is not None and predicted == first_number(gold)


def article_numbers(text: str) -> set[str]:
    return set(re.findall(r"第(\d+)条", text))


def item_scorer(task: str, golds: list[str]) -> tuple[str, Callable[[str, str], float]]:
    """(metric name, score(reply, gold) in [0, 1]) for one task; label tasks learn their labels from `golds`."""
    if task in CHOICES:
        allowed = CHOICES[task]
        return "accuracy", lambda reply, gold: float(choice_letters(reply, allowed) == choice_letters(gold, allowed))
    vocabulary = {label for gold in golds for label in gold_labels(gold)}
    if task in SINGLE_LABEL:
        return "accuracy", lambda reply, gold: float(found_labels(reply, vocabulary)[:1] == gold_labels(gold)[:1])
    if task in MULTI_LABEL:
        return "f1", lambda reply, gold: f1(set(found_labels(reply, vocabulary)), set(gold_labels(gold)))
    if task in ARTICLES:
        return "f1", lambda reply, gold: f1(article_numbers(reply), article_numbers(gold))
    if task in AMOUNT:
        return "accuracy", lambda reply, gold: float(same_amount(reply, gold))
    raise AiraMoeError(f"LawBench task {task!r} is not scored; scored tasks: {', '.join(SCORED_TASKS)}")


def score_tasks(tasks: list[str], replies: list[str], golds: list[str]) -> dict:
    """Per-task metric and the mean over tasks (each task weighs the same, as in LawBench)."""
    per_task = {}
    for task in sorted(set(tasks)):
        indices = [i for i, t in enumerate(tasks) if t == task]
        metric, score = item_scorer(task, [golds[i] for i in indices])
        values = [score(replies[i], golds[i]) for i in indices]
        per_task[task] = {"metric": metric, "score": sum(values) / len(values), "n": len(values)}
    return {"score": sum(t["score"] for t in per_task.values()) / len(per_task), "per_task": per_task}
