"""Multiple-choice scoring as in the CoLA protocol: zero-shot, chat template, next-token logits
restricted to the option letters (any number of options from 2 to 20, never assumed to be A-D).

Sources: MMLU (all, law or medicine subjects), GSM8K multiple choice, FinEval-en, and any CSV
with a question column, consecutive option columns A, B, C, ... and an answer column.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import AiraMoeError
from ..prepare_data import OPTION_LETTERS, read_csv_rows

MIN_OPTIONS, MAX_OPTIONS = 2, 20


@dataclass(frozen=True)
class Question:
    text: str
    options: tuple[str, ...]
    answer: int  # index into options
    subject: str


def letter_token_ids(tokenizer, count: int) -> list[int]:
    """One token id per option letter; a tokenizer that splits a bare capital letter cannot be scored this way."""
    ids = []
    for letter in OPTION_LETTERS[:count]:
        pieces = tokenizer.encode(letter, add_special_tokens=False)
        if len(pieces) != 1:
            raise AiraMoeError(f"option letter {letter!r} is {len(pieces)} tokens for this tokenizer; need exactly 1")
        ids.append(pieces[0])
    return ids


def format_question(question: Question) -> str:
    """The user turn: a header naming the subject, the question, lettered options and 'Answer:'."""
    subject = question.subject.replace("_", " ")
    options = "\n".join(f"{OPTION_LETTERS[i]}. {text}" for i, text in enumerate(question.options))
    return (
        f"The following is a multiple choice question about {subject}. "
        f"Reply with the letter of the correct option only.\n\n{question.text}\n{options}\nAnswer:"
    )


def question_from_row(row: dict[str, str], subject: str, where: str) -> Question:
    """A Question from a CSV row with columns question, A, B, ..., answer (a letter); errors name the file and row.

    Benchmarks with a varying option count leave a shorter row's trailing option cells empty: the
    row is scored over its own options, up to its last non-empty one.
    """
    letters = [letter for letter in OPTION_LETTERS if letter in row]
    if letters != list(OPTION_LETTERS[: len(letters)]) or not MIN_OPTIONS <= len(letters) <= MAX_OPTIONS:
        raise AiraMoeError(f"{where}: option columns must be A, B, ... consecutively, {MIN_OPTIONS}-{MAX_OPTIONS} of them; got {letters}")
    cells = [(row[letter] or "").strip() for letter in letters]
    while cells and not cells[-1]:
        cells.pop()
    if len(cells) < MIN_OPTIONS:
        raise AiraMoeError(f"{where}: needs at least {MIN_OPTIONS} non-empty options in columns {letters}, got {len(cells)}")
    answer = (row.get("answer") or "").strip().upper()
    if answer not in letters[: len(cells)]:
        raise AiraMoeError(f"{where}: answer {answer!r} is not one of the row's options {letters[: len(cells)]}")
    return Question((row.get("question") or "").strip(), tuple(cells), letters.index(answer), subject)


def csv_questions(path: Path, subject: str) -> list[Question]:
    rows = read_csv_rows(path)
    if not rows or "question" not in rows[0]:
        raise AiraMoeError(f"{path}: expected a header with 'question', option columns A, B, ... and 'answer'")
    return [question_from_row(row, subject, f"{path} row {n + 2}") for n, row in enumerate(rows)]


MMLU_SUBSETS = {"mmlu": None, "mmlu_law": "Law", "mmlu_medicine": "Medicine"}


def mmlu_subjects(folder: Path, category: str | None) -> list[str]:
    """Subjects whose mapping category matches; the mapping's `Medicine_genetics` names the file `medical_genetics`."""
    mapping = json.loads((folder / "mapping.json").read_text())
    subjects = []
    for key, value in mapping.items():
        if category is None or value["category"] == category:
            subjects.append("medical_genetics" if key == "Medicine_genetics" else key)
    return sorted(subjects)


def mmlu_questions(folder: Path, category: str | None) -> list[Question]:
    """MMLU test CSVs (no header: question, A, B, C, D, answer) of the chosen category."""
    questions = []
    for subject in mmlu_subjects(folder, category):
        path = folder / "data" / "test" / f"{subject}_test.csv"
        if not path.is_file():
            raise FileNotFoundError(f"MMLU subject {subject!r} has no file {path}")
        for n, fields in enumerate(read_csv_rows(path, header=False)):
            row = dict(zip(["question", "A", "B", "C", "D", "answer"], fields))
            questions.append(question_from_row(row, subject, f"{path} row {n + 1}"))
    return questions


def fineval_questions(folder: Path) -> list[Question]:
    return [q for path in sorted((folder / "test").glob("*.csv")) for q in csv_questions(path, path.stem)]


def usable(question: Question) -> bool:
    """Rows with an empty option between others, or repeated options, cannot be answered by letter (GSM8K MC has some)."""
    options = [o.strip().lower() for o in question.options]
    return all(options) and len(set(options)) == len(options)


def score_choices(logits, questions: list[Question]) -> dict:
    """Accuracy overall and per subject; `logits` has one column per letter A.. (at least the most options)."""
    correct_by_subject: dict[str, list[int]] = {}
    predictions = []
    for row, question in zip(logits, questions):
        predicted = int(row[: len(question.options)].argmax())
        predictions.append(OPTION_LETTERS[predicted])
        correct_by_subject.setdefault(question.subject, []).append(int(predicted == question.answer))
    flat = [c for values in correct_by_subject.values() for c in values]
    return {
        "accuracy": sum(flat) / len(flat),
        "n": len(flat),
        "per_subject": {s: sum(v) / len(v) for s, v in sorted(correct_by_subject.items())},
        "predictions": predictions,
    }
