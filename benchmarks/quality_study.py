"""Quality study (issue "Quality study"): LoRA, PiSSA, LoRA with CoLA's implied learning rates and the
aira_moe modes, at equal trainable parameters, fine-tuned by the stock `llamafactory-cli train` on
four domains; the primary measure is LLaMA-Factory's own held-out loss (per-token NLL of the
reference answers of the domain's held-out split, `eval_loss`).

Runs are independent processes spread over the GPUs (several per GPU: the model is small); every
finished run is appended to the results file at once, and runs already there are skipped, so an
interrupted study resumes where it stopped. With --then-seeds, each method's extra seeds are queued at
its best rate as soon as its sweep has finished, ahead of the runs still waiting, so a sweep and its seeds fit
in one call.

    python benchmarks/quality_study.py --model SMOLLM2_DIR --results results.jsonl \
        --domains gsm8k,fineval --lrs 1e-4,4e-4,1.6e-3 --seeds 0 --then-seeds 1,2 --gpus 0,1 --per-gpu 7
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from threading import Condition

from quality_grid import DOMAINS, METHODS, SCORE_TASKS


def with_rank_budget(settings: dict, model: str) -> dict:
    """LOD's budget at the uniform rank's mean (`lora_rank` per block), read from the model's config.

    A fixed budget would give full mode more parameters than the others on a model with fewer blocks
    (120 on Gemma-3-270M's 18 blocks: 4.0 M trainable against LoRA's 2.4 M, as its first GPU probe showed).
    """
    if not settings.get("use_layer_wise_rank"):
        return settings
    config = json.loads((Path(model) / "config.json").read_text())
    blocks = config.get("num_hidden_layers") or config["text_config"]["num_hidden_layers"]
    return {**settings, "rank_budget": settings["lora_rank"] * blocks}


def run_config(model: str, data_dir: str, domain: str, method: str, lr: float, seed: int, steps: int, output: Path,
               template: str = "chatml") -> dict:
    train, test = DOMAINS[domain]
    settings, multiplier = METHODS[method]
    settings = with_rank_budget(settings, model)
    return {
        "model_name_or_path": model,
        "stage": "sft",
        "do_train": True,
        "do_eval": True,
        "lora_target": "all",
        **settings,
        "dataset": train,
        "eval_dataset": test,
        "eval_on_each_dataset": "," in test,
        "dataset_dir": data_dir,
        "template": template,
        "cutoff_len": 512,
        "preprocessing_num_workers": 2,
        "dataloader_num_workers": 0,
        "per_device_train_batch_size": 16,
        "per_device_eval_batch_size": 32,
        "max_steps": steps,
        "learning_rate": lr * multiplier,
        "lr_scheduler_type": "cosine",
        "warmup_ratio": 0.1,
        "bf16": True,
        "disable_gradient_checkpointing": True,
        "logging_steps": 10,
        "save_strategy": "no",
        "report_to": "none",
        "seed": seed,
        "output_dir": str(output),
        "overwrite_output_dir": True,
    }


def run_key(domain: str, method: str, lr: float, seed: int) -> str:
    return f"{domain}/{method}/lr{lr:g}/seed{seed}"


def gpu_env(gpu: str) -> dict[str, str]:
    """The environment of one run pinned to one GPU (no torchrun relaunch)."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": gpu, "OMP_NUM_THREADS": "2"}
    env.pop("FORCE_TORCHRUN", None)
    return env


def score_adapter(domain: str, config: dict, gpu: str, workdir: Path, scoring: argparse.Namespace) -> dict[str, dict]:
    """The domain's task scores of the adapter a run saved, by `aira-moe eval` with the training template.

    Multiple-choice tasks are scored in full; generative ones on a seeded sample of `--score-limit`.
    A PiSSA run is scored through the plain LoRA that `pissa_convert` saved beside it: the adapter
    itself does not reload faithfully (`aira_moe.evaluation.loading.check_reloadable`).
    """
    from aira_moe.evaluation.registry import TASKS
    from aira_moe.evaluation.tasks import summary

    converted = Path(config["output_dir"]) / "pissa_converted"
    adapter = converted if converted.is_dir() else Path(config["output_dir"])
    scores = {}
    for task in SCORE_TASKS[domain]:
        output = workdir / f"{Path(config['output_dir']).name}_{task}.json"
        command = [sys.executable, "-m", "aira_moe.cli", "eval", "--model", config["model_name_or_path"],
                   "--adapter", str(adapter), "--task", task, "--template", config["template"],
                   "--data-dir", config["dataset_dir"], "--source", str(scoring.source), "--batch-size", "32",
                   "--output", str(output)]
        if TASKS[task].kind == "generate":
            command += ["--limit", str(scoring.score_limit)]
        result = subprocess.run(command, env=gpu_env(gpu), capture_output=True, text=True)
        if result.returncode != 0:
            scores[task] = {"error": (result.stdout + result.stderr)[-1500:]}
            continue
        scores[task] = summary(json.loads(output.read_text())["metrics"])
    return scores


def check_scoring(domains: list[str]) -> None:
    """Refuse `--score` before any training when a domain's tasks cannot be scored here."""
    from aira_moe.evaluation.registry import missing_requirements

    for domain in domains:
        for task in SCORE_TASKS[domain]:
            if problem := missing_requirements(task):
                raise SystemExit(f"--score: task {task} of domain {domain} {problem}")


def train_once(key: str, config: dict, gpu: str, workdir: Path) -> dict:
    """One `llamafactory-cli train` on one GPU; the record holds eval/train loss, parameters and time."""
    name = key.replace("/", "_")
    config_path = workdir / f"{name}.yaml"
    config_path.write_text(json.dumps(config))  # JSON is YAML
    env = gpu_env(gpu)
    started = time.time()
    result = subprocess.run(["llamafactory-cli", "train", str(config_path)], env=env, capture_output=True, text=True)
    log = result.stdout + result.stderr
    (workdir / f"{name}.log").write_text(log)
    record = {"key": key, "returncode": result.returncode, "wall_s": round(time.time() - started, 1), **run_identity(config)}
    results = Path(config["output_dir"]) / "all_results.json"
    if results.is_file():
        record.update(json.loads(results.read_text()))
    history = Path(config["output_dir"]) / "trainer_log.jsonl"
    if history.is_file():
        rows = [json.loads(line) for line in history.read_text().splitlines()]
        record["loss_curve"] = [[r["current_steps"], r["loss"]] for r in rows if "loss" in r]
    trainable = re.findall(r"trainable params: ([\d,]+)", log)
    record["trainable_params"] = int(trainable[-1].replace(",", "")) if trainable else None
    per_dataset = [record.get(f"eval_{name}_loss") for name in config["eval_dataset"].split(",")]
    if len(per_dataset) > 1 and None not in per_dataset:  # a mixture: the primary measure is the mean over its test sets
        record["eval_loss"] = sum(per_dataset) / len(per_dataset)
    if result.returncode != 0:
        record["error"] = log[-1500:]
    return record


def run_identity(config: dict) -> dict:
    """What a run key does not say but a resumed study must match: the model (by folder name) and the steps."""
    return {"model": Path(config["model_name_or_path"]).name, "steps": config["max_steps"]}


def check_same_study(results: Path, identity: dict) -> None:
    """Refuse to resume from runs of another model or length: their keys would match and be skipped as done
    (a 40-step probe taken for a 200-step run). Records from before these fields were written say nothing."""
    if not results.is_file():
        return
    for line in filter(str.strip, results.read_text().splitlines()):
        record = json.loads(line)
        for field, wanted in identity.items():
            if field in record and record[field] != wanted:
                raise SystemExit(f"--results {results}: run {record['key']} has {field} {record[field]!r}, this study "
                                 f"{wanted!r}; give runs of another {field} their own results file")


def finished_runs(results: Path) -> set[str]:
    """Keys of the runs in `results` that succeeded: a failed run (out of memory, killed) is retried on resume."""
    from quality_report import successful_runs

    return {record["key"] for _, record in successful_runs(results)} if results.is_file() else set()


def best_rates(results: Path) -> dict[tuple[str, str], list[float]]:
    """(domain, method) -> [the learning rate `quality_report` chooses in `results` (the sweep seed's lowest loss)]."""
    from quality_report import best_settings, load

    return {key: [entry["lr"]] for key, entry in best_settings(load(results)).items()}


def edge_extensions(results: Path) -> dict[tuple[str, str], list[float]]:
    """(domain, method) -> [the next rate beyond the grid] where the best rate sits at the grid's edge.

    The step is the grid's own ratio, so a x4 grid grows by x4 (or /4) on the side of the best rate.
    """
    from quality_report import best_settings, load

    extensions = {}
    for key, entry in best_settings(load(results)).items():
        grid, lr = entry["grid"], entry["lr"]
        if entry["edge"]:
            extensions[key] = [lr * grid[1] / grid[0] if lr == grid[-1] else lr * grid[0] / grid[1]]
    return extensions


def seeds_due(results: Path, sweeps: dict[tuple[str, str], set[str]], seeds: list[int]) -> list[tuple[str, str, float, int]]:
    """(domain, method, best lr, seed) for each sweep in `sweeps` (its run keys) that has finished in `results`.

    Lets one call sweep a method and then run its extra seeds at the rate the sweep chose, without a second
    call that must wait for the first (a device machine is lent for minutes at a time)."""
    done = finished_runs(results)
    complete = [sweep for sweep, keys in sweeps.items() if keys <= done]
    if not complete:
        return []
    best = best_rates(results)
    return [(domain, method, lr, seed) for domain, method in complete for lr in best[(domain, method)] for seed in seeds
            if run_key(domain, method, lr, seed) not in done]


def parse_args() -> argparse.Namespace:
    """The study's options, checked before any training (a typo must not cost a device call)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--template", default="chatml", help="LLaMA-Factory template (`gemma` for Gemma-3-270M).")
    parser.add_argument("--results", type=Path, required=True, help="JSON lines; existing runs are skipped.")
    parser.add_argument("--domains", default=",".join(DOMAINS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--lrs", default="1e-4,4e-4,1.6e-3")
    parser.add_argument("--method-lrs", type=json.loads, default={},
                        help='JSON {"method": [rates]}: these methods swept on their own grid instead of --lrs.')
    parser.add_argument("--domain-lr-scale", type=json.loads, default={},
                        help='JSON {"domain": factor}: that domain\'s grids (--lrs and --method-lrs) times the factor, so '
                             'domains whose optima differ (FinEval-en\'s sit 16x below GSM8K\'s) sweep in one study.')
    parser.add_argument("--best-of", type=Path, help="Instead of --lrs: each domain and method at its best rate in this results file (for more seeds).")
    parser.add_argument("--extend-edges", type=Path, help="Instead of --lrs: one rate beyond the grid for each domain and method whose best rate in this results file is at the grid's edge.")
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--then-seeds", default="",
                        help="With --lrs: once a method's sweep has finished, also run these seeds at its best rate.")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--gpus", default="0")
    parser.add_argument("--per-gpu", type=int, default=4, help="Concurrent runs per GPU.")
    parser.add_argument("--deadline-s", type=float, default=None, help="Start no run after this many seconds.")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/quality"))
    parser.add_argument("--override", type=json.loads, default={}, help="JSON merged into every config (CPU smoke runs).")
    parser.add_argument("--score", action="store_true",
                        help="Also score each trained adapter on its domain's tasks (SCORE_TASKS); with --then-seeds, only "
                             "the extra seeds' adapters (the sweep's runs are there to choose a rate).")
    parser.add_argument("--score-limit", type=int, default=300, help="Items of each generative task scored (seeded sample).")
    parser.add_argument("--source", type=Path, default=Path(os.environ.get("AIRA_MOE_SOURCE", "../shared/data")),
                        help="Raw benchmark folder for the multiple-choice tasks (layout of ../shared/data).")
    args = parser.parse_args()
    args.domains, args.methods = args.domains.split(","), args.methods.split(",")
    for option, given, allowed in (("--domains", args.domains, DOMAINS), ("--methods", args.methods, METHODS),
                                   ("--method-lrs", list(args.method_lrs), METHODS),
                                   ("--domain-lr-scale", list(args.domain_lr_scale), DOMAINS)):
        if unknown := [name for name in given if name not in allowed]:
            raise SystemExit(f"{option}: unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
    if bad := {domain: factor for domain, factor in args.domain_lr_scale.items()
               if not isinstance(factor, (int, float)) or factor <= 0}:
        raise SystemExit(f"--domain-lr-scale: {json.dumps(bad)} is not a positive number")
    if args.score:
        check_scoring(args.domains)
    args.then_seeds = [int(s) for s in args.then_seeds.split(",") if s]
    if args.then_seeds and (args.best_of or args.extend_edges):
        raise SystemExit("--then-seeds follows a sweep (--lrs / --method-lrs); it cannot be used with --best-of or --extend-edges")
    return args


def planned(args: argparse.Namespace) -> dict[tuple[str, str], list[tuple[float, int]]]:
    """(domain, method) -> its (rate, seed) runs in grid order, only where it has any: a sweep over the grids, or
    the rates --best-of / --extend-edges choose."""
    grid = [float(x) for x in args.lrs.split(",")]
    chosen = best_rates(args.best_of) if args.best_of else edge_extensions(args.extend_edges) if args.extend_edges else None
    plan = {}
    for domain in args.domains:
        scale = args.domain_lr_scale.get(domain, 1)
        for method in args.methods:
            rates = ([lr * scale for lr in args.method_lrs.get(method, grid)] if chosen is None
                     else chosen.get((domain, method), []))
            if rates:
                plan[(domain, method)] = [(lr, int(seed)) for seed in args.seeds.split(",") for lr in rates]
    return plan


def job(args: argparse.Namespace, domain: str, method: str, lr: float, seed: int) -> tuple[str, dict]:
    """(run key, LLaMA-Factory config) of one run."""
    key = run_key(domain, method, lr, seed)
    config = run_config(args.model, args.data_dir, domain, method, lr, seed, args.steps,
                        args.workdir / "runs" / key.replace("/", "_"), args.template)
    return key, {**config, **args.override}


def run_all(args: argparse.Namespace, jobs: list[tuple[str, dict]], follow_ups: Callable[[], list[tuple[str, dict]]],
            scored: Callable[[str], bool]) -> None:
    """Train the jobs, `--per-gpu` at a time on each GPU, appending each record as it finishes.

    After every finished run, `follow_ups()` may queue more (the --then-seeds runs of a sweep that just ended); they
    go ahead of the runs still waiting, so that a domain's seeds finish before later sweeps take the slots (a
    deadline then cuts sweeps, not the seeds of sweeps already done). `scored(key)` says whether --score scores that
    run's adapter.
    """
    args.workdir.mkdir(parents=True, exist_ok=True)
    slots = [gpu for gpu in args.gpus.split(",") for _ in range(args.per_gpu)]
    waiting, started, changed = deque(jobs), time.time(), Condition()
    in_flight = 0

    def next_run() -> tuple[str, dict] | None:
        """The next run to start, waiting while runs in flight may still queue follow-ups; None once there is none."""
        nonlocal in_flight
        with changed:
            changed.wait_for(lambda: waiting or not in_flight)
            if not waiting or (args.deadline_s is not None and time.time() - started > args.deadline_s):
                return None
            in_flight += 1
            return waiting.popleft()

    def work(gpu: str) -> None:
        nonlocal in_flight
        while (run := next_run()) is not None:
            key, config = run
            record = None
            try:
                record = train_once(key, config, gpu, args.workdir)
                if args.score and record["returncode"] == 0 and scored(key):
                    record["scores"] = score_adapter(key.split("/")[0], config, gpu, args.workdir, args)
            finally:
                with changed:
                    in_flight -= 1
                    if record is not None:
                        with args.results.open("a") as out:
                            out.write(json.dumps(record) + "\n")
                        print(f"[{time.time() - started:6.0f} s] {key}: eval_loss={record.get('eval_loss')} "
                              f"rc={record['returncode']}", flush=True)
                        waiting.extendleft(reversed(follow_ups()))
                    changed.notify_all()

    with ThreadPoolExecutor(max_workers=len(slots)) as pool:
        for worker in [pool.submit(work, gpu) for gpu in slots]:
            worker.result()


def main() -> None:
    args = parse_args()
    # the identity every job's config will have: --override may set max_steps (CPU smoke runs) or the model
    check_same_study(args.results, run_identity({"model_name_or_path": args.model, "max_steps": args.steps, **args.override}))
    done = finished_runs(args.results)
    plan = planned(args)
    sweeps = {sweep: {run_key(*sweep, lr, seed) for lr, seed in runs} for sweep, runs in plan.items()}
    # seed by seed, each in the order the domains, methods and rates were given (a deadline cuts the last ones)
    runs = sorted(((seed, domain, method, lr) for (domain, method), rates in plan.items() for lr, seed in rates),
                  key=lambda run: run[0])
    jobs = [job(args, domain, method, lr, seed) for seed, domain, method, lr in runs
            if run_key(domain, method, lr, seed) not in done]
    submitted = {key for key, _ in jobs}

    def follow_ups() -> list[tuple[str, dict]]:
        """The --then-seeds runs of every sweep that has finished, not queued yet."""
        due = [job(args, *run) for run in seeds_due(args.results, sweeps, args.then_seeds)] if args.then_seeds else []
        due = [(key, config) for key, config in due if key not in submitted]
        submitted.update(key for key, _ in due)
        return due

    # seeds whose sweep finished in an earlier call go first: a resumed study completes what it can before sweeping on
    jobs = follow_ups() + jobs
    sweep_keys = set().union(*sweeps.values())
    after = f"; seeds {','.join(map(str, args.then_seeds))} follow each sweep at its best rate" if args.then_seeds else ""
    print(f"{len(jobs)} runs to do ({len(done)} already done){after}", flush=True)
    run_all(args, jobs, follow_ups, scored=lambda key: not (args.then_seeds and key in sweep_keys))


if __name__ == "__main__":
    main()
