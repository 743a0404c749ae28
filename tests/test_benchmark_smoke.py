"""The benchmarks' CPU-side checks: speed.py's smoke mode (records well formed, never speed) and the report helpers."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import pytest
from conftest import REPO, SHARED_DATA, run_python


def test_speed_benchmark_smoke_mode(tmp_path):
    output = tmp_path / "speed.json"
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--smoke", "--variants",
               "lora,basic_2x3,basic_2x3_fp32,full_2x3_budget128,naive_2x3", "--checkpointing", "off,on", "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    report = json.loads(output.read_text())
    assert {"command", "device", "versions", "records", "one_time_costs"} <= set(report)
    variants = ("lora", "basic_2x3", "basic_2x3_fp32", "full_2x3_budget128", "naive_2x3")
    assert [(r["variant"], r["gradient_checkpointing"], r["batch"]) for r in report["records"]] == [
        (v, gc, b) for gc in (False, True) for v in variants for b in (1, 2)
    ]
    for record in report["records"]:
        assert {"model", "variant", "num_A", "num_B", "step_ms", "tokens_per_s", "mfu", "peak_mem_gib"} <= set(record)
        assert record["step_ms"] > 0 and record["tokens_per_s"] > 0
    by_variant = {r["variant"]: r for r in report["records"] if not r["gradient_checkpointing"] and r["batch"] == 2}
    # the naive loop computes the same function, and on an fp32 model the compute dtype changes nothing:
    # same loss after the same steps from the same seed
    assert by_variant["naive_2x3"]["final_loss"] == by_variant["basic_2x3"]["final_loss"]
    assert by_variant["basic_2x3_fp32"]["final_loss"] == by_variant["basic_2x3"]["final_loss"]
    costs = report["one_time_costs"][0]
    assert sum(costs["ranks"]) == 8 and costs["calibration_s"] >= 0  # the smoke budget


def test_speed_benchmark_autocast_smoke(tmp_path):
    output = tmp_path / "speed.json"
    command = [sys.executable, str(REPO / "benchmarks" / "speed.py"), "--smoke", "--autocast", "--variants",
               "lora,basic_2x3,frozen_base", "--checkpointing", "off", "--profile", "5", "--output", str(output)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    records = json.loads(output.read_text())["records"]
    assert all(r["autocast"] for r in records)
    assert {r["trainable_params"] for r in records if r["variant"] == "frozen_base"} == {0}
    for record in records:  # on the CPU the profile names the operators; GPU times are zero there
        ops = [entry["op"] for entry in record["profile"]["top_ops"]]
        assert len(ops) == 5 and all(op.startswith("aten::") for op in ops)


def _quality_record(key: str, eval_loss: float) -> str:
    return json.dumps({"key": key, "returncode": 0, "eval_loss": eval_loss})


def test_quality_study_budgets_lod_ranks_by_the_models_blocks(tmp_path, monkeypatch):
    """Full mode keeps the other methods' parameters on any model: its budget is lora_rank per block, read from the
    model's config (flat, or nested under text_config), not SmolLM2's 120."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_study import run_config

    def config(method: str, model_config: dict) -> dict:
        model = tmp_path / str(len(list(tmp_path.iterdir())))
        model.mkdir()
        (model / "config.json").write_text(json.dumps(model_config))
        return run_config(str(model), "data", "gsm8k", method, 1e-3, 0, 10, tmp_path / "out")

    assert config("aira_full_learned", {"num_hidden_layers": 18})["rank_budget"] == 4 * 18
    assert config("aira_basic_lod", {"text_config": {"num_hidden_layers": 30}})["rank_budget"] == 120
    assert "rank_budget" not in config("aira_basic", {"num_hidden_layers": 18})


def test_quality_study_extends_the_grid_beyond_an_edge_optimum(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_study import best_rates, edge_extensions

    results = tmp_path / "results.jsonl"
    losses = {  # gsm8k/lora best at the top, fineval/lora best at the bottom, medicine/lora inside
        ("gsm8k", 1e-4): 0.9, ("gsm8k", 4e-4): 0.8, ("gsm8k", 1.6e-3): 0.7,
        ("fineval", 1e-4): 0.2, ("fineval", 4e-4): 0.3, ("fineval", 1.6e-3): 0.4,
        ("medicine", 1e-4): 1.5, ("medicine", 4e-4): 1.3, ("medicine", 1.6e-3): 1.4,
    }
    results.write_text("\n".join(_quality_record(f"{d}/lora/lr{lr:g}/seed0", v) for (d, lr), v in losses.items()))
    extensions = edge_extensions(results)
    assert extensions.keys() == {("gsm8k", "lora"), ("fineval", "lora")}
    assert extensions[("gsm8k", "lora")][0] == pytest.approx(6.4e-3)
    assert extensions[("fineval", "lora")][0] == pytest.approx(2.5e-5)
    assert best_rates(results)[("medicine", "lora")] == [4e-4]


def test_quality_study_scales_a_domains_grids_so_two_domains_sweep_in_one_study(tmp_path, monkeypatch):
    """FinEval-en's grids sit 16x below GSM8K's: scaled, they give the very rates (and run keys) it ran on alone."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import quality_study

    monkeypatch.setattr("sys.argv", ["quality_study.py", "--model", "m", "--results", str(tmp_path / "r.jsonl"),
                                     "--domains", "gsm8k,fineval", "--methods", "lora,pissa",
                                     "--lrs", "1.6e-3,3.2e-3,6.4e-3,1.28e-2", "--method-lrs", '{"pissa": [4e-4, 3.2e-3]}',
                                     "--domain-lr-scale", '{"fineval": 0.0625}'])
    plan = quality_study.planned(quality_study.parse_args())
    keys = {sweep: [quality_study.run_key(*sweep, lr, seed) for lr, seed in runs] for sweep, runs in plan.items()}
    assert keys[("gsm8k", "lora")][0] == "gsm8k/lora/lr0.0016/seed0"
    assert keys[("fineval", "lora")] == [f"fineval/lora/lr{lr}/seed0" for lr in ("0.0001", "0.0002", "0.0004", "0.0008")]
    assert keys[("fineval", "pissa")] == ["fineval/pissa/lr2.5e-05/seed0", "fineval/pissa/lr0.0002/seed0"]
    assert [lr for lr, _ in plan[("fineval", "lora")]] == [1e-4, 2e-4, 4e-4, 8e-4]  # the same floats, not near them


def test_quality_study_resume_retries_failed_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_study import finished_runs

    results = tmp_path / "results.jsonl"
    assert finished_runs(results) == set()
    failed = json.dumps({"key": "law/lora/lr0.0016/seed0", "returncode": 1, "error": "CUDA out of memory"})
    results.write_text("\n".join([_quality_record("law/lora/lr0.0004/seed0", 0.8), failed, ""]))
    assert finished_runs(results) == {"law/lora/lr0.0004/seed0"}


def test_quality_study_runs_the_extra_seeds_once_each_sweep_has_finished(tmp_path, monkeypatch):
    """--then-seeds: each method's seeds at the rate its own sweep chose, queued as that sweep completes (a sweep
    finished in an earlier call counts, and its seeds go before any new sweep run; one with a failed run gets no seeds
    until resume has redone it); --score then scores those seeds' adapters only."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import quality_study

    losses = {("lora", 1e-3): 0.9, ("lora", 2e-3): 0.7, ("lora", 4e-3): 0.8,
              ("pissa", 1e-3): 0.6, ("pissa", 2e-3): 0.65, ("pissa", 4e-3): 0.7}

    trained = []

    def train_once(key, config, gpu, workdir):
        trained.append(key)
        _, method, _, seed = key.split("/")
        failed = method == "aira_basic" and config["learning_rate"] == 4e-3
        return {"key": key, "returncode": int(failed), "eval_loss": losses.get((method, config["learning_rate"]), 0.5)
                + 0.01 * int(seed[4:])}

    results = tmp_path / "results.jsonl"
    results.write_text("".join(_quality_record(f"gsm8k/pissa/lr{lr:g}/seed0", losses["pissa", lr]) + "\n"
                               for lr in (1e-3, 2e-3, 4e-3)))
    monkeypatch.setattr(quality_study, "train_once", train_once)
    monkeypatch.setattr(quality_study, "score_adapter", lambda domain, *_: {"gsm8k": {"accuracy": 0.5}})
    monkeypatch.setattr("sys.argv", ["quality_study.py", "--model", "m", "--results", str(results), "--workdir",
                                     str(tmp_path / "work"), "--domains", "gsm8k", "--methods", "lora,pissa,aira_basic",
                                     "--lrs", "1e-3,2e-3,4e-3", "--then-seeds", "1,2", "--per-gpu", "2", "--score"])
    quality_study.main()
    records = [json.loads(line) for line in results.read_text().splitlines()]
    keys = [record["key"] for record in records]
    seeds = sorted(key for key in keys if not key.endswith("seed0"))
    assert sorted(record["key"] for record in records if "scores" in record) == seeds  # the sweep only chooses
    assert seeds == ["gsm8k/lora/lr0.002/seed1", "gsm8k/lora/lr0.002/seed2",
                     "gsm8k/pissa/lr0.001/seed1", "gsm8k/pissa/lr0.001/seed2"]
    assert set(trained[:2]) == {key for key in seeds if "/pissa/" in key}  # its sweep was done: its seeds start first
    lora_sweep = [keys.index(f"gsm8k/lora/lr{lr:g}/seed0") for lr in (1e-3, 2e-3, 4e-3)]
    assert min(keys.index(key) for key in seeds if "/lora/" in key) > max(lora_sweep)
    assert len(keys) == len(set(keys)) and sum("/aira_basic/" in key for key in keys) == 3


def test_quality_study_runs_a_finished_sweeps_seeds_before_the_sweeps_still_waiting(tmp_path, monkeypatch):
    """With one slot the order is exact: a sweep's seeds jump the queue, so a deadline cuts later sweeps, not them."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import quality_study

    trained = []

    def train_once(key, config, gpu, workdir):
        trained.append(key)
        return {"key": key, "returncode": 0, "eval_loss": 1.0 - config["learning_rate"]}

    monkeypatch.setattr(quality_study, "train_once", train_once)
    monkeypatch.setattr("sys.argv", ["quality_study.py", "--model", "m", "--results", str(tmp_path / "r.jsonl"),
                                     "--workdir", str(tmp_path / "work"), "--domains", "gsm8k,fineval", "--methods",
                                     "lora", "--lrs", "1e-3,2e-3", "--then-seeds", "1", "--per-gpu", "1"])
    quality_study.main()
    assert trained == ["gsm8k/lora/lr0.001/seed0", "gsm8k/lora/lr0.002/seed0", "gsm8k/lora/lr0.002/seed1",
                       "fineval/lora/lr0.001/seed0", "fineval/lora/lr0.002/seed0", "fineval/lora/lr0.002/seed1"]


def test_quality_study_refuses_bad_input_before_training(tmp_path, monkeypatch):
    """A typo or an unscorable task stops the study at once, not after hours of training."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from dataclasses import replace

    import quality_study
    from aira_moe.evaluation.registry import TASKS

    def study(*options: str) -> str:
        argv = ["quality_study.py", "--model", "nowhere", "--results", str(tmp_path / "r.jsonl"),
                "--workdir", str(tmp_path / "work"), *options]
        monkeypatch.setattr("sys.argv", argv)
        with pytest.raises(SystemExit) as refused:
            quality_study.main()
        return str(refused.value)

    assert "--domains: unknown lawz; choose from gsm8k" in study("--domains", "gsm8k,lawz")
    assert "--methods: unknown dora; choose from lora" in study("--methods", "lora,dora")
    assert "--domain-lr-scale: unknown lawz; choose from gsm8k" in study("--domain-lr-scale", '{"lawz": 2}')
    assert '--domain-lr-scale: {"law": 0} is not a positive number' in study("--domain-lr-scale", '{"law": 0}')
    assert "--then-seeds follows a sweep" in study("--best-of", str(tmp_path / "b.jsonl"), "--then-seeds", "1")
    monkeypatch.setitem(TASKS, "medicine", replace(TASKS["medicine"], requires={"no_such_metric": "no-such"}))
    assert "--score: task medicine of domain medicine needs the Python module(s) no_such_metric" in study(
        "--domains", "gsm8k,medicine", "--score")
    assert not (tmp_path / "r.jsonl").exists() and not (tmp_path / "work").exists()


def test_quality_study_never_resumes_from_runs_of_another_length_or_model(tmp_path, monkeypatch):
    """A run key names domain, method, rate and seed only: a 40-step probe or another model's run in the results
    file would be skipped as done, so the study refuses it (records without the fields, from before, still count)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import quality_study

    results = tmp_path / "r.jsonl"
    probe = {"key": "gsm8k/lora/lr0.001/seed0", "returncode": 0, "eval_loss": 0.8, "model": "gemma-3-270m", "steps": 40}
    results.write_text(_quality_record("gsm8k/lora/lr0.002/seed0", 0.7) + "\n" + json.dumps(probe) + "\n")
    trained = []
    monkeypatch.setattr(quality_study, "train_once", lambda key, config, *_: trained.append(key) or
                        {"key": key, "returncode": 0, "eval_loss": 0.5, **quality_study.run_identity(config)})

    def study(model: str, steps: str, *options: str) -> None:
        monkeypatch.setattr("sys.argv", ["quality_study.py", "--model", model, "--results", str(results), "--workdir",
                                         str(tmp_path / "work"), "--domains", "gsm8k", "--methods", "lora",
                                         "--lrs", "1e-3,2e-3,4e-3", "--steps", steps, *options])
        quality_study.main()

    with pytest.raises(SystemExit, match="has steps 40, this study 200"):
        study("/models/gemma-3-270m", "200")
    with pytest.raises(SystemExit, match="has model 'gemma-3-270m', this study 'SmolLM2-135M-Instruct'"):
        study("/models/SmolLM2-135M-Instruct", "40")
    assert trained == []
    study("/models/gemma-3-270m", "40")
    assert trained == ["gsm8k/lora/lr0.004/seed0"]
    study("/models/gemma-3-270m", "200", "--override", '{"max_steps": 40}')  # the steps its configs will have
    assert trained == ["gsm8k/lora/lr0.004/seed0"]


def test_quality_report_chooses_the_rate_on_the_sweep_seed(tmp_path, monkeypatch):
    """Extra seeds at the chosen rate must not move the choice to a rate that ran once."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_report import best_settings, load

    results = tmp_path / "results.jsonl"
    runs = {("1e-4", 0): 0.8, ("4e-4", 0): 0.7, ("4e-4", 1): 0.9, ("4e-4", 2): 0.9}
    results.write_text("\n".join(_quality_record(f"gsm8k/lora/lr{lr}/seed{seed}", v) for (lr, seed), v in runs.items()))
    entry = best_settings(load(results))[("gsm8k", "lora")]
    assert entry["lr"] == 4e-4 and entry["seeds"] == 3
    assert entry["mean"] == pytest.approx(2.5 / 3) and entry["std"] == pytest.approx(0.11547, abs=1e-5)


def test_quality_report_never_chooses_a_diverged_rate(tmp_path, monkeypatch):
    """A NaN loss (json writes NaN) loses to every finite one and still closes the grid's edge."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_study import edge_extensions
    from quality_report import best_settings, load

    results = tmp_path / "results.jsonl"
    runs = {  # the diverged rate at the top of one grid and at the bottom of the other
        ("gsm8k", "1e-4"): 0.9, ("gsm8k", "4e-4"): 0.8, ("gsm8k", "1.6e-3"): float("nan"),
        ("fineval", "2.5e-5"): float("nan"), ("fineval", "1e-4"): 0.2, ("fineval", "4e-4"): 0.3,
    }
    results.write_text("\n".join(_quality_record(f"{d}/lora/lr{lr}/seed0", v) for (d, lr), v in runs.items()))
    best = best_settings(load(results))
    assert (best[("gsm8k", "lora")]["lr"], best[("fineval", "lora")]["lr"]) == (4e-4, 1e-4)
    assert best[("fineval", "lora")]["mean"] == pytest.approx(0.2) and not best[("fineval", "lora")]["edge"]
    assert edge_extensions(results) == {}


def test_quality_report_ablations_give_a_verdict_only_beyond_two_standard_errors(tmp_path, monkeypatch):
    """Δ against the reference at both best rates; helps / hurts / neutral from the seeds, n=1 says so."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_report import ablation_table, best_settings, load

    seeds = {"aira_basic": (0.70, 0.71, 0.72), "aira_basic_awsvd": (0.60, 0.62, 0.61),
             "aira_basic_lod": (0.69, 0.73, 0.71), "aira_standard": (0.75,)}
    results = tmp_path / "results.jsonl"
    results.write_text("\n".join(_quality_record(f"gsm8k/{method}/lr1e-3/seed{seed}", loss)
                                 for method, losses in seeds.items() for seed, loss in enumerate(losses)))
    rows = {line.split(" | ")[0].removeprefix("| "): line.split(" | ")[1].rstrip(" |")
            for line in ablation_table(best_settings(load(results))).splitlines()[2:]}
    assert rows["+ AwSVD (basic_awsvd - basic)"] == "-0.1000 ± 0.0082: helps"
    assert rows["+ LOD ranks (basic_lod - basic)"].endswith(": neutral")
    assert rows["+ activation weights (standard - basic)"] == "+0.0400 (n=1)"
    assert "`learned` - `fully` (full mode)" not in rows  # neither side was run


def test_quality_report_splits_the_mixture_into_its_test_sets_at_the_best_rate(tmp_path, monkeypatch):
    """The mixture's rate is chosen on the mean over its test sets; its own table shows each test set there."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_report import tables, study

    def mixture_run(lr: str, seed: int, losses: tuple[float, ...]) -> str:
        per_set = dict(zip(("gsm8k_test", "fineval_en_test", "genmedgpt_test", "lawbench_test"), losses))
        return json.dumps({"key": f"mixture/lora/lr{lr}/seed{seed}", "returncode": 0, "eval_loss": sum(losses) / 4,
                           **{f"eval_{name}_loss": loss for name, loss in per_set.items()}})

    results = tmp_path / "results.jsonl"
    results.write_text("\n".join([mixture_run("1e-3", 0, (0.1, 0.9, 0.9, 0.9)),  # the best gsm8k, not the best mean
                                   mixture_run("2e-3", 0, (0.6, 0.2, 1.2, 0.4)), mixture_run("2e-3", 1, (0.8, 0.2, 1.4, 0.6))]))
    lines = tables(study([results])).splitlines()
    assert "| method (mixture) | gsm8k_test | fineval_en_test | genmedgpt_test | lawbench_test |" in lines
    assert "| lora | 0.7000 ± 0.1414 (n=2) | 0.2000 ± 0.0000 (n=2) | 1.3000 ± 0.1414 (n=2) | 0.5000 ± 0.1414 (n=2) |" in lines
    assert "| lora | **0.6750 ± 0.1061 (lr 0.002*, n=2)** |" in lines


def test_quality_report_scores_only_the_best_rate_and_skips_failed_scoring(tmp_path, monkeypatch):
    """The task-score table sits beside the loss table: same rate, mean ± std over the scored seeds."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_report import best_settings, load, scores_table, task_scores

    def scored(key: str, loss: float, scores: dict) -> str:
        return json.dumps({"key": key, "returncode": 0, "eval_loss": loss, "scores": scores})

    results, retrained = tmp_path / "results.jsonl", tmp_path / "scored.jsonl"
    results.write_text("\n".join([
        scored("law/lora/lr4e-4/seed0", 0.7, {"lawbench": {"score": 0.9}}),  # not the best rate: ignored
        scored("law/lora/lr1.6e-3/seed0", 0.6, {"lawbench": {"score": 0.2}}),
        scored("law/aira_full/lr1.6e-3/seed0", 0.6, {"lawbench": {"error": "Traceback ..."}}),
    ]))
    retrained.write_text(scored("law/lora/lr1.6e-3/seed0", 0.1, {"lawbench": {"score": 0.4}}))  # a retrain, scored
    best = best_settings(load(results))
    scores = task_scores([results, retrained], best)
    assert scores[("law", "lora")] == {"lawbench": [0.2, 0.4]} and dict(scores[("law", "aira_full")]) == {}
    table = scores_table(scores)
    assert "| lora | 0.3000 ± 0.1414 (n=2) |" in table and "| aira_full | – |" in table
    assert scores_table(task_scores([results], {})) == ""


def test_quality_report_command_prints_the_table_and_plots_curves(tmp_path, monkeypatch):
    """The command docs/results.md quotes: the table on stdout, the figure (bars and training curves) as PNG."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_report import training_curves

    results, figure = tmp_path / "results.jsonl", tmp_path / "quality.png"
    rows = []
    for method, loss, last in (("lora", 0.7, 0.8), ("aira_basic", 0.6, 0.7)):
        curve = [[10, 1.2], [20, last]]
        rows.append(json.dumps({"key": f"law/{method}/lr4e-4/seed0", "returncode": 0, "eval_loss": loss, "loss_curve": curve}))
    rows.append(json.dumps({"key": "law/pissa/lr4e-4/seed0", "returncode": 1, "error": "killed"}))
    results.write_text("\n".join(rows))
    assert training_curves(results) == {("law", "lora", 4e-4, 0): [[10, 1.2], [20, 0.8]],
                                        ("law", "aira_basic", 4e-4, 0): [[10, 1.2], [20, 0.7]]}
    scored = tmp_path / "scored.jsonl"  # a retrain of lora's run with its task score: its loss stays out
    scored.write_text(json.dumps({"key": "law/lora/lr4e-4/seed0", "returncode": 0, "eval_loss": 0.1,
                                  "scores": {"lawbench": {"score": 0.25}}}))
    command = [sys.executable, str(REPO / "benchmarks" / "quality_report.py"), str(results), str(scored), "--plot", str(figure)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "| aira_basic | **0.6000 (lr 0.0004, n=1)** |" in result.stdout and "| pissa |" not in result.stdout
    assert "| lora | 0.7000 (lr 0.0004, n=1) |" in result.stdout and "| lora | 0.2500 (n=1) |" in result.stdout
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_e2e_report_ratios_and_curve_gaps(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from e2e_report import load, markdown_table

    results = tmp_path / "e2e.jsonl"
    rows = []
    for suffix in ("nogc", "gc"):
        for name, speed, shift in (("lora", 10.0, 1.0), ("aira", 12.5, 0.0), ("aira_fp32", 11.0, 0.002)):
            curve = [[5, 3.0 + shift], [10, 2.0 + shift]]
            rows.append(json.dumps({"run": f"{name}_{suffix}", "train_samples_per_second": speed, "loss_curve": curve}))
    results.write_text("\n".join(rows))
    table = markdown_table(load([results])).splitlines()
    assert "| off | aira | 12.50 | 1.250 | 2.0000 | 0.0000 |" in table
    assert "| on | aira_fp32 | 11.00 | 1.100 | 2.0020 | 0.0020 |" in table


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")
@pytest.mark.parametrize("kind", ["aira_moe", "pissa"])
def test_quality_study_scores_a_saved_adapter_on_its_domains_tasks(tmp_path, tiny_model_dir, prepared_data, monkeypatch, kind):
    """--score: `aira-moe eval` on the adapter a run saved, with the run's template and data; headline numbers kept.

    A PiSSA run is scored through the LoRA that `pissa_convert` saved beside it; its own adapter is refused.
    """
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from aira_moe import AiraMoeConfig

    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from quality_study import score_adapter

    adapter, targets = tmp_path / "run", ["q_proj", "v_proj"]
    if kind == "aira_moe":
        config = AiraMoeConfig(r=4, num_A=2, num_B=3, target_modules=targets)
    else:
        config = LoraConfig(r=4, target_modules=targets, init_lora_weights="pissa_niter_4")
        get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), LoraConfig(r=8, target_modules=targets)).save_pretrained(
            adapter / "pissa_converted")
    get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(adapter)
    run = {"model_name_or_path": str(tiny_model_dir), "output_dir": str(adapter), "template": "chatml",
           "dataset_dir": str(prepared_data)}
    scoring = argparse.Namespace(source=SHARED_DATA, score_limit=2)
    if kind == "aira_moe":  # generative (two answers scored)
        scores = score_adapter("medicine", run, "", tmp_path, scoring)["medicine"]
        assert scores.get("n") == 2 and 0 <= scores["rouge_l"] <= 100, scores
    else:  # multiple choice, scored in full
        scores = score_adapter("fineval", run, "", tmp_path, scoring)["fineval"]
        assert scores.get("n") == 260 and 0 <= scores["accuracy"] <= 1, scores


def test_speed_shapes_take_another_vocabulary(monkeypatch):
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from speed import SHAPES, model_config

    assert model_config("llama-3.2-3b").vocab_size == SHAPES["llama-3.2-3b"]["vocab_size"] == 128256
    config = model_config("llama-3.2-3b:49152")
    assert config.vocab_size == 49152 and config.hidden_size == 3072


def test_cli_benchmark_configs_are_accepted_by_llamafactory(tmp_path, monkeypatch):
    """Every run of cli_benchmark.py (both shapes, plain and 4-bit) is a config LLaMA-Factory's parser accepts,
    with the documented mode settings; a broken benchmark would otherwise be found only on the GPU."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    from cli_benchmark import RUNS, SHAPES, run_config
    from transformers import LlamaConfig

    configs = {}
    for model, shape in SHAPES.items():
        LlamaConfig(**shape).save_pretrained(tmp_path / model)
        for quantization in (None, 4):
            args = argparse.Namespace(model=model, dataset="d", data_dir=tmp_path, seq=1024, batch=8, steps=30,
                                      checkpointing=quantization is not None, max_samples=100, quantization=quantization,
                                      deepspeed=None, fsdp=None, saved_weights=False)
            for run in RUNS:
                config = run_config(args, tmp_path / model, run, liger=False, output=tmp_path / "out")
                configs[f"{model}/{run}/{quantization}"] = dict(config, bf16=False)  # the parser checks bf16 support of this device
    (tmp_path / "configs.json").write_text(json.dumps(configs, default=str))
    output = run_python(f"""
import json
from llamafactory.hparams import get_train_args
for name, config in json.load(open({str(tmp_path / 'configs.json')!r})).items():
    model_args, _, training_args, finetuning_args, _ = get_train_args(config)
    print(name, finetuning_args.finetuning_type, model_args.quantization_bit, finetuning_args.use_awsvd_init,
          finetuning_args.rank_budget if finetuning_args.finetuning_type == "aira_moe" else None)
""")
    assert "llama-3.1-8b/aira_full/4 aira_moe 4 True 256" in output and "llama-3.2-3b/aira_full/None aira_moe None True 224" in output
    assert output.count(" lora ") == 8 and output.count(" aira_moe ") == 16  # lora and floor, 4 aira_moe runs
    assert "llama-3.1-8b/floor/None lora None" in output


def test_quality_poll_returns_as_soon_as_the_detached_study_has_finished(tmp_path):
    """The GPU machine's calls poll a study that outlives them: a poll must hand back the results so far at once
    when the study is done (an exited, unreaped process counts as done) and say so while it still runs."""
    study_dir, out = tmp_path / "study", tmp_path / "out"
    study_dir.mkdir()
    out.mkdir()
    (study_dir / "quality.jsonl").write_text(_quality_record("law/lora/lr0.0032/seed1", 0.61) + "\n")
    (study_dir / "log").write_text("1 runs to do (0 already done)\n[   300 s] law/lora/lr0.0032/seed1: eval_loss=0.61 rc=0\n")
    (study_dir / "memory").write_text("0, 900\n0, 87000\n0, 1200\n")
    env = {**os.environ, "OUT": str(out), "STUDY_DIR": str(study_dir)}

    def poll(study: subprocess.Popen, wait_s: int) -> tuple[str, float]:
        (study_dir / "pid").write_text(f"{study.pid}\n")
        started = time.monotonic()
        done = subprocess.run(["bash", str(REPO / "benchmarks" / "quality_poll.sh"), str(wait_s)], env=env,
                              capture_output=True, text=True, check=True)
        return done.stdout, time.monotonic() - started

    quick = subprocess.Popen(["sleep", "1"])
    time.sleep(1.5)  # exited, not reaped: a zombie
    printed, waited = poll(quick, 120)
    assert waited < 60 and "study finished: 1 runs" in printed and "peak GPU memory 87000 MiB" in printed
    assert "law/lora/lr0.0032/seed1: eval_loss=0.61" in printed
    assert (out / "quality.jsonl").read_text() == (study_dir / "quality.jsonl").read_text()
    quick.wait()
    slow = subprocess.Popen(["sleep", "60"])
    try:
        printed, waited = poll(slow, 1)
    finally:
        slow.kill()
        slow.wait()
    assert "study still running" in printed and waited < 30
