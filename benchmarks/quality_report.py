"""Table and plot of the quality study: docs/results.md's numbers from benchmarks/results/quality_*.jsonl.

The plot shows each domain's held-out losses as bars and, below them, the training curves behind them.

For every domain and method the learning rate with the lowest held-out loss in the sweep (seed 0)
is chosen; the table gives that loss as mean ± std over the seeds run at that rate, and flags a
best rate at the edge of the grid (the sweep may not have found the method's optimum). The mixture's
loss is the mean over its four test sets; a table of its own gives each of them. Choosing
on the sweep seed alone keeps the extra seeds from favouring the one rate that got them. A second
table gives the task scores of the runs trained with --score at those rates.

The first results file is the study; any further file only adds task scores: runs retrained with
--score into a file of their own (their keys repeat the study's, so their losses stay out of the
loss table).

    python benchmarks/quality_report.py benchmarks/results/quality_smollm2.jsonl \
        benchmarks/results/quality_smollm2_scored.jsonl --plot docs/quality_smollm2.png
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Iterator

from quality_grid import DOMAINS, METHODS
from report_cli import run_report


SWEEP_SEED = 0
# The headline number of each scored task (higher is better), as `aira-moe eval` reports it.
HEADLINE = {"gsm8k_mc": "accuracy", "gsm8k": "accuracy", "fineval": "accuracy", "medicine": "rouge_l", "lawbench": "score"}


def successful_runs(path: Path) -> Iterator[tuple[tuple[str, str, float, int], dict]]:
    """((domain, method, lr, seed), record) for every run of the results file that finished."""
    for line in filter(str.strip, path.read_text().splitlines()):
        record = json.loads(line)
        if record.get("returncode") == 0:
            domain, method, lr, seed = record["key"].split("/")
            yield (domain, method, float(lr[2:]), int(seed.removeprefix("seed"))), record


def load(path: Path) -> dict[tuple[str, str, float], dict[int, float]]:
    """(domain, method, lr) -> {seed: held-out loss}, from the successful runs.

    A run that diverged (NaN loss) counts as infinitely bad rather than missing: it must never be
    chosen, yet its rate still belongs to the grid, so the rate below it is no longer an edge.
    """
    losses: dict[tuple[str, str, float], dict[int, float]] = defaultdict(dict)
    for (domain, method, lr, seed), record in successful_runs(path):
        if "eval_loss" in record:
            loss = record["eval_loss"]
            losses[(domain, method, lr)][seed] = loss if math.isfinite(loss) else math.inf
    return losses


def sweep_loss(by_seed: dict[int, float]) -> float:
    """The loss a rate is chosen on: the sweep seed's, or the mean where the sweep seed is missing."""
    return by_seed[SWEEP_SEED] if SWEEP_SEED in by_seed else statistics.mean(by_seed.values())


def best_settings(losses) -> dict[tuple[str, str], dict]:
    """Per (domain, method): best lr, its losses, whether it sits at the grid's edge."""
    best = {}
    for domain in DOMAINS:
        for method in METHODS:
            grid = sorted(lr for d, m, lr in losses if (d, m) == (domain, method))
            if not grid:
                continue
            lr = min(grid, key=lambda x: sweep_loss(losses[(domain, method, x)]))
            values = list(losses[(domain, method, lr)].values())
            best[(domain, method)] = {
                "lr": lr,
                "mean": statistics.mean(values),
                "std": statistics.stdev(values) if len(values) > 1 else None,
                "seeds": len(values),
                "edge": len(grid) > 1 and lr in (grid[0], grid[-1]),
                "grid": grid,
            }
    return best


def markdown_table(best) -> str:
    domains = [d for d in DOMAINS if any(k[0] == d for k in best)]
    lines = ["| method | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for method in (m for m in METHODS if any(k[1] == m for k in best)):
        cells = []
        for domain in domains:
            entry = best.get((domain, method))
            if entry is None:
                cells.append("–")
                continue
            spread = f" ± {entry['std']:.4f}" if entry["std"] is not None else ""
            flag = "*" if entry["edge"] else ""
            winner = min((v["mean"], m) for (d, m), v in best.items() if d == domain)[1] == method
            value = f"{entry['mean']:.4f}{spread} (lr {entry['lr']:g}{flag}, n={entry['seeds']})"
            cells.append(f"**{value}**" if winner else value)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# One technique at a time (issue: ablations on basic), then what the experts that add rank change in full mode.
ABLATIONS = (
    ("+ activation weights (standard - basic)", "aira_standard", "aira_basic"),
    ("+ LOD ranks (basic_lod - basic)", "aira_basic_lod", "aira_basic"),
    ("+ AwSVD (basic_awsvd - basic)", "aira_basic_awsvd", "aira_basic"),
    ("`heuristic` - `fully` (full mode)", "aira_full_heuristic", "aira_full"),
    ("`learned` - `fully` (full mode)", "aira_full_learned", "aira_full"),
    ("`fully` collaboration (basic - LoRA)", "aira_basic", "lora"),
)


def difference(entry: dict, reference: dict) -> str:
    """Δ held-out loss (lower is better) with its standard error and a verdict where both sides have seeds.

    helps / hurts need |Δ| above two standard errors of the difference; with one seed on either side
    there is no error to compare with, so the cell says n=1 instead of a verdict.
    """
    delta = entry["mean"] - reference["mean"]
    if entry["std"] is None or reference["std"] is None:
        return f"{delta:+.4f} (n=1)"
    error = math.sqrt(entry["std"] ** 2 / entry["seeds"] + reference["std"] ** 2 / reference["seeds"])
    verdict = "hurts" if delta > 2 * error else "helps" if delta < -2 * error else "neutral"
    return f"{delta:+.4f} ± {error:.4f}: {verdict}"


def ablation_table(best) -> str:
    """Each ablation's Δ at both methods' best rates, per domain; empty when no pair was run."""
    domains = [d for d in DOMAINS if any(k[0] == d for k in best)]
    lines = ["| change | " + " | ".join(domains) + " |", "|---|" + "---|" * len(domains)]
    for label, method, reference in ABLATIONS:
        cells = [difference(best[(d, method)], best[(d, reference)]) if {(d, method), (d, reference)} <= best.keys()
                 else "–" for d in domains]
        if any(cell != "–" for cell in cells):
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def task_scores(paths: list[Path], best) -> dict[tuple[str, str], dict[str, list[float]]]:
    """(domain, method) -> {task: headline score of each scored run} at the method's best rate.

    Only the best rate counts, as in the loss table; a task whose scoring failed (an `error`
    entry) is left out rather than counted as zero.
    """
    scores: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    runs = (run for path in paths for run in successful_runs(path))
    for (domain, method, lr, _seed), record in runs:
        if (domain, method) in best and lr == best[(domain, method)]["lr"]:
            for task, values in record.get("scores", {}).items():
                if HEADLINE[task] in values:
                    scores[(domain, method)][task].append(values[HEADLINE[task]])
    return scores


def mean_cell(values: list[float]) -> str:
    """`mean ± std (n=k)` of a table cell, `–` when nothing was measured."""
    if not values:
        return "–"
    spread = f" ± {statistics.stdev(values):.4f}" if len(values) > 1 else ""
    return f"{statistics.mean(values):.4f}{spread} (n={len(values)})"


def scores_table(scores) -> str:
    """Mean ± std of each task's headline score over the scored seeds; empty when nothing was scored."""
    tasks = [t for t in HEADLINE if any(t in by_task for by_task in scores.values())]
    if not tasks:
        return ""
    lines = ["| method | " + " | ".join(f"{t} ({HEADLINE[t]})" for t in tasks) + " |", "|---|" + "---|" * len(tasks)]
    for method in (m for m in METHODS if any(key[1] == m for key in scores)):
        cells = [mean_cell(next((by_task[task] for (_, m), by_task in scores.items() if m == method and task in by_task), []))
                 for task in tasks]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MIXTURE_TEST_SETS = DOMAINS["mixture"][1].split(",")


def mixture_losses(path: Path, best) -> dict[str, dict[str, list[float]]]:
    """method -> {test set: its held-out loss in each seed's run} at the method's best mixture rate.

    The rate is chosen on the mean over the test sets (the mixture's `eval_loss`), as for any domain; this
    shows where that mean comes from: one model trained on all four domains, scored on each.
    """
    losses: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for (domain, method, lr, _seed), record in successful_runs(path):
        if domain == "mixture" and (domain, method) in best and lr == best[(domain, method)]["lr"]:
            for name in MIXTURE_TEST_SETS:
                if f"eval_{name}_loss" in record:
                    losses[method][name].append(record[f"eval_{name}_loss"])
    return losses


def mixture_table(losses) -> str:
    """Each test set's held-out loss of the mixture runs; empty before any mixture run."""
    if not losses:
        return ""
    lines = ["| method (mixture) | " + " | ".join(MIXTURE_TEST_SETS) + " |", "|---|" + "---|" * len(MIXTURE_TEST_SETS)]
    for method in (m for m in METHODS if m in losses):
        lines.append(f"| {method} | " + " | ".join(mean_cell(losses[method][name]) for name in MIXTURE_TEST_SETS) + " |")
    return "\n".join(lines)


def training_curves(path: Path) -> dict[tuple[str, str, float, int], list[list[float]]]:
    """(domain, method, lr, seed) -> [[step, training loss], ...] as LLaMA-Factory logged it."""
    return {run: record["loss_curve"] for run, record in successful_runs(path) if record.get("loss_curve")}


def plot(study: dict, path: Path) -> None:
    """Top row: held-out loss per method at its best rate; bottom row: the sweep seed's training curves there."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best, curves = study["best"], study["curves"]
    domains = [d for d in DOMAINS if any(k[0] == d for k in best)]
    figure, axes = plt.subplots(2, len(domains), figsize=(4.2 * len(domains), 7.6), squeeze=False)
    colours = dict(zip(METHODS, plt.get_cmap("tab20").colors))
    for bars, lines, domain in zip(axes[0], axes[1], domains):
        methods = [m for m in METHODS if (domain, m) in best and math.isfinite(best[(domain, m)]["mean"])]  # not diverged
        means = [best[(domain, m)]["mean"] for m in methods]
        errors = [best[(domain, m)]["std"] or 0.0 for m in methods]
        bars.bar(range(len(methods)), means, yerr=errors, color=[colours[m] for m in methods])
        bars.set_xticks(range(len(methods)), methods, rotation=60, ha="right", fontsize=8)
        low, high = min(means), max(means)
        bars.set_ylim(low - 0.3 * (high - low + 1e-9), high + 0.3 * (high - low + 1e-9))
        bars.set_title(f"{domain}: held-out loss (lower is better)", fontsize=9)
        for method in methods:
            curve = curves.get((domain, method, best[(domain, method)]["lr"], SWEEP_SEED))
            if curve:
                steps, losses = zip(*curve)
                lines.plot(steps, losses, color=colours[method], linewidth=1, label=method)
        lines.set_yscale("log")
        lines.set_xlabel("optimizer step", fontsize=8)
        lines.set_title(f"{domain}: training loss at the best rate (seed {SWEEP_SEED})", fontsize=9)
    axes[1][0].legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def study(paths: list[Path]) -> dict:
    """Everything the tables and the plot show: losses and curves from the first file, scores from all."""
    best = best_settings(load(paths[0]))
    return {"best": best, "curves": training_curves(paths[0]), "scores": task_scores(paths, best),
            "mixture": mixture_losses(paths[0], best)}


def tables(study: dict) -> str:
    """The loss table, the ablations' differences, the mixture's test sets, then the task scores where present."""
    return "\n\n".join(filter(None, (markdown_table(study["best"]), ablation_table(study["best"]),
                                      mixture_table(study["mixture"]), scores_table(study["scores"]))))


def main() -> None:
    run_report(__doc__, study, tables, plot)


if __name__ == "__main__":
    main()
