"""Table and loss-curve plot of `e2e_llamafactory.sh`'s results: throughput against stock LoRA, and
whether aira_moe's bf16 adapter matmuls leave its training curve where the fp32 ones put it.

    python benchmarks/e2e_report.py benchmarks/results/e2e_llamafactory.jsonl --plot docs/e2e_loss_curves.png
"""

from __future__ import annotations

import json
from pathlib import Path

from report_cli import run_report


def load(paths: list[Path]) -> dict[str, dict]:
    """Run name (e.g. `aira_gc`) -> its record; a later file's run replaces an earlier one of the same name."""
    return {record["run"]: record for path in paths for record in map(json.loads, path.read_text().splitlines())}


def markdown_table(runs: dict[str, dict]) -> str:
    lines = ["| gradient checkpointing | run | samples/s | x LoRA | final logged loss | max loss gap to `aira` |",
             "|---|---|---|---|---|---|"]
    for suffix, label in (("nogc", "off"), ("gc", "on")):
        lora = runs[f"lora_{suffix}"]["train_samples_per_second"]
        reference = [loss for _, loss in runs[f"aira_{suffix}"]["loss_curve"]]
        for name in ("lora", "aira", "aira_fp32"):
            record = runs[f"{name}_{suffix}"]
            curve = [loss for _, loss in record["loss_curve"]]
            gap = max(abs(a - b) for a, b in zip(curve, reference))
            lines.append(f"| {label} | {name} | {record['train_samples_per_second']:.2f} | "
                         f"{record['train_samples_per_second'] / lora:.3f} | {curve[-1]:.4f} | {gap:.4f} |")
    return "\n".join(lines)


def plot(runs: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    for axis, (suffix, label) in zip(axes, (("nogc", "without"), ("gc", "with"))):
        for name, style in (("lora", "-"), ("aira", "-"), ("aira_fp32", "--")):
            steps, losses = zip(*runs[f"{name}_{suffix}"]["loss_curve"])
            axis.plot(steps, losses, style, label=name)
        axis.set_title(f"{label} gradient checkpointing", fontsize=9)
        axis.set_xlabel("step")
    axes[0].set_ylabel("training loss")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    run_report(__doc__, load, markdown_table, plot)


if __name__ == "__main__":
    main()
