"""`aira-moe eval`: the run of its tasks (registry.py lists them), the results JSON and the printed table."""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..prepare_data import OPTION_LETTERS
from . import gsm8k, lawbench, multiple_choice, text_metrics
from .inference import answer_nll, generate, next_token_logits
from .loading import adapter_type, check_reloadable, load_model, pick_device
from .prompts import prompt_encoder
from .records import load_records
from .registry import TASKS, missing_requirements


@dataclass
class EvalSettings:
    model: str
    adapter: str | None
    task: str
    data: Path | None
    output: Path
    template: str | None = None
    batch_size: int = 8
    limit: int | None = None
    seed: int = 0
    device: str = "auto"
    max_new_tokens: int | None = None


def sample(items: list, limit: int | None, seed: int) -> list:
    """A seeded random subset (all items when no limit), in a stable order, so subjects mix in small slices."""
    if limit is None or limit >= len(items):
        return items
    chosen = sorted(random.Random(seed).sample(range(len(items)), limit))
    return [items[i] for i in chosen]


def load_questions(task: str, data: Path) -> tuple[list[multiple_choice.Question], int]:
    """Questions of a multiple-choice task and how many unusable rows were dropped."""
    if task in multiple_choice.MMLU_SUBSETS:
        questions = multiple_choice.mmlu_questions(data, multiple_choice.MMLU_SUBSETS[task])
    elif task == "fineval":
        questions = multiple_choice.fineval_questions(data)
    else:
        subject = "mathematical reasoning" if task == "gsm8k_mc" else data.stem
        questions = multiple_choice.csv_questions(data, subject)
    usable = [q for q in questions if multiple_choice.usable(q)]
    return usable, len(questions) - len(usable)


def load_items(settings: EvalSettings) -> tuple[list, int]:
    """The task's questions or records (and unusable rows dropped), read before the model loads."""
    if TASKS[settings.task].kind == "choice":
        return load_questions(settings.task, settings.data)
    records = load_records(settings.data, settings.task)
    if settings.task == "lawbench":
        records = [r for r in records if r["task"] in lawbench.SCORED_TASKS]
    return records, 0


def run_choice(settings: EvalSettings, items: tuple[list, int], model, tokenizer, encode) -> dict:
    questions, dropped = items
    questions = sample(questions, settings.limit, settings.seed)
    prompts = [encode("", multiple_choice.format_question(q)) for q in questions]
    letter_ids = multiple_choice.letter_token_ids(tokenizer, max(len(q.options) for q in questions))
    logits = next_token_logits(model, prompts, letter_ids, tokenizer.pad_token_id, settings.batch_size, settings.task)
    metrics = multiple_choice.score_choices(logits, questions)
    metrics["dropped_unusable_rows"] = dropped
    metrics["answers"] = [OPTION_LETTERS[q.answer] for q in questions]
    return metrics


def alpaca_user_turn(record: dict) -> str:
    """The user turn LLaMA-Factory builds from an alpaca record: instruction, newline, input."""
    return "\n".join(part for part in (record.get("instruction", ""), record.get("input", "")) if part)


def run_generate(settings: EvalSettings, items: tuple[list, int], model, tokenizer, encode) -> dict:
    records = sample(items[0], settings.limit, settings.seed)
    prompts = [encode(r.get("system", ""), alpaca_user_turn(r)) for r in records]
    budget = settings.max_new_tokens or TASKS[settings.task].max_new_tokens
    replies = generate(model, tokenizer, prompts, budget, settings.batch_size, settings.task)
    if settings.task == "gsm8k":
        metrics = gsm8k.score_replies(replies, [r["answer"] for r in records])
    elif settings.task == "lawbench":
        metrics = lawbench.score_tasks([r["task"] for r in records], replies, [r["output"] for r in records])
    else:
        metrics = text_metrics.score_generations(replies, [r["output"] for r in records])
    metrics["replies"] = replies
    return metrics


def run_nll(settings: EvalSettings, items: tuple[list, int], model, tokenizer, encode) -> dict:
    records = sample(items[0], settings.limit, settings.seed)
    prompts = [encode(r.get("system", ""), alpaca_user_turn(r)) for r in records]
    end = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    answers = [tokenizer(r["output"], add_special_tokens=False)["input_ids"] + end for r in records]
    total, tokens = answer_nll(model, prompts, answers, tokenizer.pad_token_id, settings.batch_size, "nll")
    return {"nll": total / tokens, "answer_tokens": tokens, "n": len(records)}


RUNNERS: dict[str, Callable] = {"choice": run_choice, "generate": run_generate, "nll": run_nll}


def check_settings(settings: EvalSettings) -> None:
    """Every input problem is reported before the model loads."""
    if settings.task not in TASKS:
        raise SystemExit(f"--task {settings.task!r} is not a task; choose one of: {', '.join(TASKS)}")
    if settings.data is None:
        raise SystemExit(f"--task {settings.task} needs --data ({TASKS[settings.task].description})")
    if not settings.data.exists():
        raise SystemExit(f"--data {settings.data} does not exist (task {settings.task}: {TASKS[settings.task].description})")
    if settings.batch_size < 1:
        raise SystemExit(f"--batch-size must be >= 1, got {settings.batch_size}")
    if settings.limit is not None and settings.limit < 1:
        raise SystemExit(f"--limit must be >= 1, got {settings.limit}")
    if problem := missing_requirements(settings.task):
        raise SystemExit(f"--task {settings.task} {problem}")
    if settings.adapter:
        check_reloadable(settings.adapter)


def read_items(settings: EvalSettings) -> tuple[list, int]:
    """The checked task's items; a malformed file is one line naming it."""
    check_settings(settings)
    try:
        return load_items(settings)
    except (ValueError, FileNotFoundError, UnicodeDecodeError) as error:
        raise SystemExit(f"--data: {error}") from None


def evaluate_tasks(tasks: list[EvalSettings]) -> list[dict]:
    """Run several tasks on one model and adapter, loaded once: every input is read before it loads.

    Loading an 8B model takes longer than scoring a few hundred questions, so a recipe scores all
    of its domain's tasks in one process. Each task writes its own JSON, identical for identical inputs.
    """
    items = [read_items(settings) for settings in tasks]
    first = tasks[0]
    import torch

    model, tokenizer = load_model(first.model, first.adapter, pick_device(first.device))
    encode = prompt_encoder(tokenizer, first.template)
    results = []
    for settings, task_items in zip(tasks, items):
        started = time.time()
        torch.manual_seed(settings.seed)
        metrics = RUNNERS[TASKS[settings.task].kind](settings, task_items, model, tokenizer, encode)
        results.append(write_results(settings, metrics))
        print_table(results[-1], time.time() - started)
    return results


def evaluate(settings: EvalSettings) -> dict:
    """Run one task; write the results JSON and print the summary table."""
    return evaluate_tasks([settings])[0]


def write_results(settings: EvalSettings, metrics: dict) -> dict:
    results = {
        "task": settings.task,
        "model": settings.model,
        "adapter": settings.adapter,
        "adapter_type": adapter_type(settings.adapter) if settings.adapter else None,
        "data": str(settings.data),
        "template": settings.template or "tokenizer chat template",
        "limit": settings.limit,
        "seed": settings.seed,
        "metrics": metrics,
    }
    settings.output.parent.mkdir(parents=True, exist_ok=True)
    settings.output.write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")
    return results


def summary(metrics: dict) -> dict[str, float]:
    """The headline numbers of a metrics dict (lists such as predictions and replies left out)."""
    heads = {k: v for k, v in metrics.items() if isinstance(v, (int, float))}
    for task, values in metrics.get("per_task", {}).items():
        heads[f"{task} {values['metric']}"] = values["score"]
    return heads


def print_table(results: dict, seconds: float) -> None:
    print(f"\n{results['task']}: {results['model']}" + (f" + {results['adapter']}" if results["adapter"] else ""))
    for name, value in summary(results["metrics"]).items():
        print(f"  {name:<28}{value:>12.4f}" if isinstance(value, float) else f"  {name:<28}{value:>12}")
    print(f"  {'seconds':<28}{seconds:>12.1f}")
