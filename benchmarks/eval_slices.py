"""The base demo model (SmolLM2-135M-Instruct) on a seeded slice of every `aira-moe eval` task, on CPU:
headline scores and wall time per 100 items (start-up included), one JSON for the issue notes.

    python benchmarks/eval_slices.py --limit 100 --generate-limit 24 --output benchmarks/results/eval_smollm2_cpu.json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from aira_moe.evaluation.tasks import TASKS, summary
from aira_moe.smollm2 import smollm2_checkpoint

# LawBench's held-out NLL is left out: its inputs run to thousands of tokens (~34 s an item on 2 CPU cores).
NLL_DATA = {"nll_gsm8k": "gsm8k_test.json", "nll_fineval": "fineval_en_test.json", "nll_medicine": "genmedgpt_test.json"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=100)
    parser.add_argument("--generate-limit", type=int, default=24)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--output", type=Path, required=True)
    args = parser.parse_args()
    model = smollm2_checkpoint()
    runs = [(task, task, None) for task in TASKS if task not in ("mc", "nll")]
    runs += [("mc", "mc (GSM8K MC csv)", "../shared/data/cola/eval/gsm8k/test/gsm8k_test.csv")]
    runs += [("nll", name, str(args.data_dir / file)) for name, file in NLL_DATA.items()]
    results = {"model": "SmolLM2-135M-Instruct (base)", "device": "cpu", "command": " ".join(sys.argv), "tasks": {}}
    with tempfile.TemporaryDirectory() as folder:
        for task, name, data in runs:
            limit = args.generate_limit if TASKS[task].kind == "generate" else args.limit
            output = Path(folder) / f"{name.split()[0]}.json"
            command = [sys.executable, "-m", "aira_moe.cli", "eval", "--model", str(model), "--task", task, "--limit", str(limit),
                       "--device", "cpu", "--data-dir", str(args.data_dir), "--output", str(output)] + (["--data", data] if data else [])
            started = time.time()
            subprocess.run(command, check=True)
            seconds = time.time() - started
            metrics = json.loads(output.read_text())["metrics"]
            items = metrics.get("n", limit)
            results["tasks"][name] = {"limit": limit, "scores": summary(metrics), "seconds": round(seconds, 1),
                                      "seconds_per_100_items": round(100 * seconds / items, 1)}
            print(name, results["tasks"][name], flush=True)
            args.output.write_text(json.dumps(results, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
