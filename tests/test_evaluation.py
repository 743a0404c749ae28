"""Scoring rules on constructed cases, batching against single items, adapters, and real SmolLM2 runs."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from aira_moe.evaluation import gsm8k, lawbench, multiple_choice, text_metrics
from aira_moe.evaluation.inference import answer_nll, next_token_logits
from aira_moe.evaluation.tasks import TASKS, EvalSettings, load_items, run_choice
from conftest import REPO, SHARED_DATA, run_cli, tiny_llama

LETTERS = "ABCDEFGHIJKLMNOPQRST"


def make_questions(option_counts: list[int], answers: list[int]) -> list[multiple_choice.Question]:
    return [
        multiple_choice.Question(f"q{i}", tuple(f"o{k}" for k in range(n)), a, "s")
        for i, (n, a) in enumerate(zip(option_counts, answers))
    ]


def test_a_model_that_always_prefers_one_letter_scores_that_letters_share():
    counts = [2, 3, 4, 5, 20, 4, 4, 2]
    answers = [1, 1, 0, 1, 19, 3, 1, 0]
    logits = torch.zeros(len(counts), 20)
    logits[:, 1] = 5.0  # always "B"
    result = multiple_choice.score_choices(logits, make_questions(counts, answers))
    assert result["accuracy"] == pytest.approx(answers.count(1) / len(answers))
    assert result["predictions"] == ["B"] * len(counts)


def test_letters_beyond_a_questions_options_are_never_chosen():
    logits = torch.zeros(1, 20)
    logits[0, 3] = 9.0  # "D" is the best letter overall, but the question has 3 options
    logits[0, 2] = 1.0
    result = multiple_choice.score_choices(logits, make_questions([3], [2]))
    assert result["predictions"] == ["C"] and result["accuracy"] == 1.0


class OneLetterModel(torch.nn.Module):
    """A causal LM stand-in whose next-token logits always favour one token id."""

    def __init__(self, favoured: int, vocab: int):
        super().__init__()
        self.favoured, self.vocab = favoured, vocab
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    @property
    def device(self) -> torch.device:
        return self.anchor.device

    def forward(self, input_ids, attention_mask, logits_to_keep=0):
        logits = torch.zeros(*input_ids.shape, self.vocab)
        logits[..., self.favoured] = 1.0
        return type("Output", (), {"logits": logits})()


def test_choice_task_end_to_end_with_a_constructed_model(tmp_path, smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    tokenizer.padding_side = "left"
    rows = ["question,A,B,C,D,E,answer"] + [f"q{i},1,2,3,4,5,{LETTERS[i % 5]}" for i in range(10)]
    data = tmp_path / "five.csv"
    data.write_text("\n".join(rows))
    favoured = tokenizer.encode("C", add_special_tokens=False)[0]
    settings = EvalSettings(model="-", adapter=None, task="mc", data=data, output=tmp_path / "r.json", batch_size=3)

    def encode(system: str, user: str) -> list[int]:
        return tokenizer(user)["input_ids"]

    result = run_choice(settings, load_items(settings), OneLetterModel(favoured, len(tokenizer)), tokenizer, encode)
    assert result["accuracy"] == pytest.approx(0.2) and set(result["predictions"]) == {"C"}


def test_rows_with_fewer_options_are_scored_over_their_own(tmp_path, smollm2_dir):
    """A CSV with a varying option count: shorter rows leave trailing cells empty and must not be dropped."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    rows = ["question,A,B,C,D,E,answer", "q0,1,2,,,,B", "q1,1,2,3,,,C", "q2,1,2,3,4,5,E", "q3,1,2,3,,,A"]
    data = tmp_path / "varying.csv"
    data.write_text("\n".join(rows))
    settings = EvalSettings(model="-", adapter=None, task="mc", data=data, output=tmp_path / "r.json", batch_size=2)
    questions, dropped = load_items(settings)
    assert dropped == 0 and [len(q.options) for q in questions] == [2, 3, 5, 3]
    favoured = tokenizer.encode("E", add_special_tokens=False)[0]  # beyond the short rows' options: never chosen there
    result = run_choice(settings, (questions, 0), OneLetterModel(favoured, len(tokenizer)), tokenizer,
                        lambda system, user: tokenizer(user)["input_ids"])
    assert result["predictions"][2] == "E" and "E" not in result["predictions"][:2] + result["predictions"][3:]
    assert result["n"] == 4


GSM8K_ROW = {"question": "Tom has 3 apples and buys 4 more. How many?", "answer": "3 + 4 = 7\n#### 7"}


def test_gsm8k_is_read_as_published(tmp_path):
    """GSM8K's own JSON lines (question, answer '... #### N') become the prepared records."""
    from aira_moe.evaluation.records import load_records

    path = tmp_path / "test.jsonl"
    path.write_text("\n".join(json.dumps(GSM8K_ROW) for _ in range(3)) + "\n")
    records = load_records(path, "gsm8k")
    assert len(records) == 3 and records[0]["answer"] == "7" and records[0]["input"] == GSM8K_ROW["question"]
    assert records[0]["output"].endswith("#### 7") and "####" in records[0]["instruction"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"question": "q", "answer": "7"}\n{not json\n', r"test.jsonl line 2: not a JSON object"),
        ('{"question": "q", "answer": "no marker"}\n', r"test.jsonl line 1: GSM8K's `answer` must end in '#### <number>'"),
        ('{"prompt": "q"}\n', r"test.jsonl line 1: expected text fields instruction, output, answer \(or GSM8K's question, answer\); got \['prompt'\]"),
        ('[{"instruction": "q"', r"test.jsonl: not valid JSON at line 1"),
    ],
)
def test_a_malformed_file_is_one_line_before_the_model_loads(tmp_path, content, message):
    from aira_moe.evaluation.tasks import evaluate

    path = tmp_path / "test.jsonl"
    path.write_text(content)
    with pytest.raises(SystemExit, match=message):
        evaluate(EvalSettings(model="nowhere", adapter=None, task="gsm8k", data=path, output=tmp_path / "r.json"))


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("question,A,C,answer", "q,1,2,A", "consecutively"),
        ("question,A,answer", "q,1,A", "2-20"),
        ("question,A,B,answer", "q,1,2,C", "not one of the row's options"),
        ("question,A,B,C,answer", "q,1,,,A", "at least 2 non-empty options"),
    ],
)
def test_bad_csv_rows_are_refused_with_the_file_and_row(tmp_path, header, row, message):
    path = tmp_path / "bad.csv"
    path.write_text(f"{header}\n{row}\n")
    with pytest.raises(ValueError, match=message) as error:
        multiple_choice.csv_questions(path, "x")
    assert "bad.csv row 2" in str(error.value)


def test_mmlu_mapping_quirk_medicine_genetics_maps_to_its_file(tmp_path):
    (tmp_path / "mapping.json").write_text(
        json.dumps({"Medicine_genetics": {"category": "Medicine"}, "anatomy": {"category": "Medicine"}, "law": {"category": "Law"}})
    )
    assert multiple_choice.mmlu_subjects(tmp_path, "Medicine") == ["anatomy", "medical_genetics"]
    assert multiple_choice.mmlu_subjects(tmp_path, None) == ["anatomy", "law", "medical_genetics"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("She pays 3 + 4 = 7.\n#### 1,234", 1234.0),
        ("The answer is $18.00.", 18.0),
        ("so 5 - 8 = -3, the answer is -3.", -3.0),
        ("10 then 20 then 30", 30.0),
        ("#### 12 apples, not 13", 12.0),
        ("no number here", None),
    ],
)
def test_gsm8k_answer_extraction(reply, expected):
    assert gsm8k.extract_answer(reply) == expected


def test_gsm8k_scores_numeric_equality():
    result = gsm8k.score_replies(["#### 18", "#### 18.0", "#### 17", "nothing"], ["18", "18", "18", "18"])
    assert result["accuracy"] == 0.5


def test_lawbench_choice_rules():
    _, score = lawbench.item_scorer("1-2", ["正确答案：B。"])
    assert score("[正确答案]B<eoa>", "正确答案：B。") == 1.0
    assert score("正确答案:B。", "正确答案：B。") == 1.0
    assert score("[正确答案]B,C<eoa>", "正确答案：B。") == 0.0, "two letters are not one answer"
    assert score("我不知道", "正确答案：B。") == 0.0


def test_lawbench_multi_label_f1_uses_the_tasks_labels_longest_first():
    golds = ["类别:婚后有子女、限制行为能力子女抚养。", "类别:有夫妻共同财产。", "类别:子女抚养。"]
    metric, score = lawbench.item_scorer("2-3", golds)
    assert metric == "f1"
    # "限制行为能力子女抚养" must not also count as "子女抚养"
    assert score("[类别]限制行为能力子女抚养<eoa>", golds[0]) == pytest.approx(2 / 3)
    assert score("婚后有子女；限制行为能力子女抚养", golds[0]) == 1.0
    assert score("有夫妻共同财产", golds[0]) == 0.0


def test_lawbench_articles_amounts_and_single_labels():
    _, articles = lawbench.item_scorer("3-1", ["法条:刑法第264条"])
    assert articles("[法条]刑法第264条、刑法第25条<eoa>", "法条:刑法第264条、刑法第266条") == pytest.approx(0.5)
    _, amount = lawbench.item_scorer("3-7", ["上文涉及到的犯罪金额:8500.0元。"])
    assert amount("[金额]8500元<eoa>", "上文涉及到的犯罪金额:8500.0元。") == 1.0
    assert amount("[金额]8,600元<eoa>", "上文涉及到的犯罪金额:8500.0元。") == 0.0
    _, label = lawbench.item_scorer("2-4", ["婚姻家庭", "房产纠纷"])
    assert label("[类别]婚姻家庭<eoa>", "婚姻家庭") == 1.0
    assert label("房产纠纷或婚姻家庭", "婚姻家庭") == 0.0
    with pytest.raises(ValueError, match="not scored"):
        lawbench.item_scorer("1-1", [])


def test_lawbench_mean_weighs_tasks_equally():
    result = lawbench.score_tasks(["1-2", "1-2", "1-2", "3-6"], ["A", "B", "C", "D"], ["A", "A", "A", "D"])
    assert result["per_task"]["1-2"]["score"] == pytest.approx(1 / 3)
    assert result["score"] == pytest.approx((1 / 3 + 1) / 2)


def test_text_metrics_bounds():
    same = text_metrics.score_generations(["take aspirin twice a day"], ["take aspirin twice a day"])
    assert same["rouge_l"] == pytest.approx(100.0) and same["bleu"] == pytest.approx(100.0)
    other = text_metrics.score_generations(["completely unrelated words"], ["take aspirin twice a day"])
    assert other["rouge_l"] == 0.0 and other["bleu"] < 1.0


def test_batched_scoring_equals_one_at_a_time():
    model = tiny_llama()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(1, 128, (n,), generator=generator).tolist() for n in (3, 9, 5, 12, 7)]
    answers = [torch.randint(1, 128, (n,), generator=generator).tolist() for n in (2, 4, 1, 3, 5)]
    batched = next_token_logits(model, prompts, [5, 6, 7], 0, 4, "t")
    single = torch.cat([next_token_logits(model, [p], [5, 6, 7], 0, 1, "t") for p in prompts])
    torch.testing.assert_close(batched, single, atol=1e-4, rtol=1e-4)
    total_b, n_b = answer_nll(model, prompts, answers, 0, 4, "t")
    total_s = sum(answer_nll(model, [p], [a], 0, 1, "t")[0] for p, a in zip(prompts, answers))
    assert n_b == sum(len(a) for a in answers) and total_b == pytest.approx(total_s, rel=1e-4)


def write_alpaca(path: Path, n: int = 6) -> Path:
    records = [{"instruction": "Answer briefly.", "input": f"What is {i} plus {i}?", "output": f"It is {2 * i}."} for i in range(n)]
    path.write_text(json.dumps(records))
    return path


def test_adapters_load_through_peft_and_an_untrained_one_changes_nothing(tmp_path, tiny_model_dir):
    """`aira-moe eval` (run in this process: its command line is what is tested) on an untrained aira_moe and LoRA adapter."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from aira_moe import AiraMoeConfig
    from aira_moe.cli import main

    data = write_alpaca(tmp_path / "d.json")
    common = ["eval", "--model", str(tiny_model_dir), "--task", "nll", "--data", str(data), "--device", "cpu"]
    main([*common, "--output", str(tmp_path / "base.json")])
    base = json.loads((tmp_path / "base.json").read_text())
    for kind, config in (("aira_moe", AiraMoeConfig(r=4, num_A=2, num_B=3, target_modules=["q_proj", "v_proj"])),
                         ("lora", LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))):
        get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config).save_pretrained(tmp_path / kind)
        main([*common, "--adapter", str(tmp_path / kind), "--output", str(tmp_path / f"{kind}.json")])
        adapted = json.loads((tmp_path / f"{kind}.json").read_text())
        assert adapted["adapter_type"] == kind.upper()
        assert adapted["metrics"]["nll"] == pytest.approx(base["metrics"]["nll"], rel=1e-5)


def test_bad_input_is_refused_before_loading(tmp_path, monkeypatch):
    with pytest.raises(SystemExit, match="--data .* does not exist"):
        from aira_moe.evaluation.tasks import evaluate

        evaluate(EvalSettings(model="nowhere", adapter=None, task="nll", data=tmp_path / "no.json", output=tmp_path / "r.json"))
    with pytest.raises(SystemExit, match="--task mc needs --data"):
        evaluate(EvalSettings(model="nowhere", adapter=None, task="mc", data=None, output=tmp_path / "r.json"))
    pissa = tmp_path / "pissa"
    pissa.mkdir()
    (pissa / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "init_lora_weights": "pissa_niter_16"}))
    with pytest.raises(SystemExit, match="init_lora_weights is 'pissa_niter_16'.*pissa_converted"):
        evaluate(EvalSettings(model="nowhere", adapter=str(pissa), task="nll", data=write_alpaca(tmp_path / "d.json"),
                              output=tmp_path / "r.json"))
    monkeypatch.setitem(TASKS, "medicine", replace(TASKS["medicine"], requires={"rouge_score": "rouge-score", "no_such_metric": "no-such"}))
    with pytest.raises(SystemExit, match=r"--task medicine needs the Python module\(s\) no_such_metric \(No module named .*pip install no-such\)"):
        evaluate(EvalSettings(model="nowhere", adapter=None, task="medicine", data=write_alpaca(tmp_path / "d.json"),
                              output=tmp_path / "r.json"))


@pytest.mark.slow
@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"shared data not found at {SHARED_DATA}")
def test_every_task_runs_on_smollm2_and_results_are_stable(tmp_path, smollm2_dir, prepared_data):
    """Every task in this process (one import, fast), then LawBench again through the CLI: same JSON."""
    from aira_moe.cli import main

    data_dir = prepared_data
    write_alpaca(tmp_path / "nll.json")
    extra = {"mc": ["--data", str(SHARED_DATA / "cola/eval/gsm8k/test/gsm8k_test.csv")], "nll": ["--data", str(tmp_path / "nll.json")]}
    for task in TASKS:
        args = ["eval", "--model", str(smollm2_dir), "--task", task, "--limit", "2", "--max-new-tokens", "8", "--source", str(SHARED_DATA)]
        args += ["--data-dir", str(data_dir), "--device", "cpu", *extra.get(task, []), "--output", str(tmp_path / f"{task}.json")]
        main(args)
        result = json.loads((tmp_path / f"{task}.json").read_text())
        assert result["task"] == task and result["metrics"], task
        if task == "lawbench":
            run_cli(["aira-moe", *args[:-1], str(tmp_path / "again.json")], cwd=REPO)
            assert (tmp_path / "again.json").read_text() == (tmp_path / f"{task}.json").read_text()


@pytest.mark.slow
def test_lm_evaluation_harness_scores_an_exported_model(tmp_path, tiny_model_dir):
    """The documented route: merge an aira_moe adapter (as `llamafactory-cli export` does, tested in test_cli.py),
    then `lm_eval` with our task YAML."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from aira_moe import AiraMoeConfig

    config = AiraMoeConfig(r=4, num_A=2, num_B=3, target_modules=["q_proj", "v_proj"], init_weights=False)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir), config)
    adapted.merge_and_unload().save_pretrained(tmp_path / "merged")
    AutoTokenizer.from_pretrained(tiny_model_dir).save_pretrained(tmp_path / "merged")
    (tmp_path / "data").mkdir()
    rows = [
        {"instruction": "Choose.", "input": f"Which is {i}?\nA. {i}\nB. {i + 1}\nC. {i + 2}\nD. {i + 3}", "output": f"{'ABCD'[i % 4]}. {i}"}
        for i in range(12)
    ]
    (tmp_path / "data" / "fineval_en_test.json").write_text(json.dumps(rows))
    run_cli(
        ["lm_eval", "--model", "hf", "--model_args", f"pretrained={tmp_path / 'merged'}", "--include_path",
         str(REPO / "evaluation" / "lm_eval_tasks"), "--tasks", "aira_fineval", "--batch_size", "4", "--device", "cpu",
         "--output_path", str(tmp_path / "results")],
        cwd=tmp_path, env={"HF_DATASETS_OFFLINE": "1"},
    )
    result = json.loads(next((tmp_path / "results").rglob("results_*.json")).read_text())
    assert result["n-samples"]["aira_fineval"]["effective"] == len(rows)
    assert 0.0 <= result["results"]["aira_fineval"]["acc,none"] <= 1.0
