"""The tasks `aira-moe eval` knows, kept free of heavy imports so the command line starts fast.

Each task names where its data lives by default: raw benchmark files under the source folder
(`--source`, the layout of ../shared/data), prepared held-out splits under `data/`
(written by `aira-moe prepare-data`). `--data` overrides either.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Task:
    kind: str  # "choice", "generate" or "nll"
    default_data: str | None  # "source:<relative path>" or "data:<file>"; None means --data is required
    description: str
    max_new_tokens: int = 0
    # module -> pip distribution, for the metrics imported only once generation is done
    requires: dict[str, str] = field(default_factory=dict)


TASKS: dict[str, Task] = {
    "mmlu": Task("choice", "source:cola/eval/mmlu", "MMLU, all 57 subjects (test)"),
    "mmlu_law": Task("choice", "source:cola/eval/mmlu", "MMLU law subjects (test)"),
    "mmlu_medicine": Task("choice", "source:cola/eval/mmlu", "MMLU medicine subjects (test)"),
    "gsm8k_mc": Task("choice", "source:cola/eval/gsm8k/test/gsm8k_test.csv", "GSM8K test as 4-option multiple choice"),
    "fineval": Task("choice", "source:cola/eval/fineval", "FinEval-en test, 32 subjects"),
    "mc": Task("choice", None, "any CSV: question, options A.. (2-20), answer"),
    "gsm8k": Task("generate", "data:gsm8k_test.json", "GSM8K test, greedy, exact numeric match", 256),
    "lawbench": Task("generate", "data:lawbench_test.json", "LawBench held-out split, accuracy and F1 tasks", 64),
    "medicine": Task("generate", "data:genmedgpt_test.json", "GenMedGPT-5k held-out replies, ROUGE-L and BLEU", 256,
                     {"rouge_score": "rouge-score", "sacrebleu": "sacrebleu"}),
    "nll": Task("nll", None, "per-token NLL of the reference answers of any alpaca JSON"),
}


def default_data(task: str, source: Path, data_dir: Path) -> Path | None:
    where = TASKS[task].default_data
    if where is None:
        return None
    root, relative = where.split(":", 1)
    return (source if root == "source" else data_dir) / relative


def missing_requirements(task: str) -> str | None:
    """Why `task` cannot be scored in this environment, or None.

    The metrics are imported after generation, so without this check a missing package is found
    only after minutes of generating (it happened on the GPU machine's reduced wheel set). The
    modules are imported, not just looked up, so that a missing dependency of theirs shows too.
    """
    failures = {}
    for module, distribution in TASKS[task].requires.items():
        try:
            importlib.import_module(module)
        except ImportError as error:
            failures[distribution] = f"{module} ({error})"
    if not failures:
        return None
    return (f"needs the Python module(s) {', '.join(failures.values())}, which do not import here "
            f"(install: pip install {' '.join(failures)})")
