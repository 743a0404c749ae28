"""Reference-based metrics for generated replies (medicine): ROUGE-L F1 and corpus BLEU-4.

Both come from the standard packages (`rouge-score` with stemming, `sacrebleu` with its default
13a tokenisation), so numbers are comparable with published ones; reported on a 0-100 scale.
"""

from __future__ import annotations


def rouge_l(predictions: list[str], references: list[str]) -> float:
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, pred)["rougeL"].fmeasure for pred, ref in zip(predictions, references)]
    return 100.0 * sum(scores) / len(scores)


def bleu(predictions: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(predictions, [references]).score


def score_generations(predictions: list[str], references: list[str]) -> dict:
    return {"rouge_l": rouge_l(predictions, references), "bleu": bleu(predictions, references), "n": len(predictions)}
