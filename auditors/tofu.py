"""TOFU-style metrics on QA sets: probability, truth ratio, ROUGE-L, memorisation, forget quality, utility."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy import stats

from unlearn.auditors.metrics import ks_p
from unlearn.data import Record, with_answer
from unlearn.distributed import sharded
from unlearn.errors import UnlearnError
from unlearn.generation import greedy_answers
from unlearn.logprobs import TokenLogProbs, token_logprobs


@dataclass
class QAEval:
    """Per-record metrics ``[N]`` of one model on one QA set."""

    ids: list[str]
    prob: np.ndarray  # p(a|q)^(1/|a|)
    truth_ratio: np.ndarray  # p~(perturbed) / p~(paraphrased), perturbed combined geometrically
    rouge_l: np.ndarray | None  # ROUGE-L recall of the greedy answer
    exact_memorisation: np.ndarray  # fraction of answer tokens that are the argmax
    extraction_strength: np.ndarray  # 1 - (shortest answer prefix after which the rest is argmax) / |a|
    exact_match: np.ndarray  # greedy answer == reference

    def summary(self) -> dict[str, float]:
        out = {"prob": float(self.prob.mean()), "truth_ratio": float(np.minimum(self.truth_ratio,
                                                                                 1 / self.truth_ratio).mean()),
               "truth_ratio_score": truth_ratio_score(self.truth_ratio),
               "exact_memorisation": float(self.exact_memorisation.mean()),
               "extraction_strength": float(self.extraction_strength.mean()),
               "exact_match": float(self.exact_match.mean())}
        if self.rouge_l is not None:
            out["rouge_l"] = float(self.rouge_l.mean())
        return out


def truth_ratio_score(tr: np.ndarray) -> float:
    """TOFU's utility-side truth-ratio statistic: mean of max(0, 1 - R)."""
    return float(np.maximum(0.0, 1.0 - tr).mean())


def extraction_strength(t: TokenLogProbs) -> np.ndarray:
    """Per record: 1 - k/L with k the smallest prefix length such that every later token is the argmax."""
    miss = (t.hit < 0.5) & t.mask
    L = t.lengths.double()
    col = torch.arange(t.mask.shape[1], dtype=torch.float64)[None, :]
    last_miss = torch.where(miss, col, torch.full_like(col, -1.0)).max(dim=1).values  # -1 if none
    return (1.0 - (last_miss + 1) / L.clamp(min=1)).numpy()


def token_accuracy(t: TokenLogProbs) -> np.ndarray:
    """``[N]`` fraction of each record's target tokens that are the argmax (1.0 = greedy reproduces it)."""
    return ((t.hit * t.mask).sum(1) / t.lengths.clamp(min=1)).numpy()


def _words(s: str) -> list[str]:
    return re.findall(r"\w+", s.lower())


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall at word level (lower-cased, no stemming): LCS / |reference|."""
    p, r = _words(prediction), _words(reference)
    if not r:
        return 0.0
    prev = [0] * (len(p) + 1)
    for rw in r:
        cur = [0] * (len(p) + 1)
        for j, pw in enumerate(p, start=1):
            cur[j] = prev[j - 1] + 1 if rw == pw else max(prev[j], cur[j - 1])
        prev = cur
    return prev[-1] / len(r)


def evaluate_qa(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], *, rouge: bool = True,
                batch_size: int = 32) -> QAEval:
    """All TOFU metrics of ``model`` on QA ``records``: one pass on the answers, one on the
    paraphrased + perturbed answers, and (``rouge``) one greedy decode."""
    bad = [r.id for r in records if not r.is_qa or r.paraphrased_answer is None or not r.perturbed_answers]
    if bad:
        raise UnlearnError(f"TOFU metrics need QA records with paraphrased_answer and perturbed_answer; "
                           f"missing on {len(bad)} record(s), e.g. '{bad[0]}'")

    def local(shard: list[Record]) -> dict[str, np.ndarray]:
        e = _evaluate_local(model, tokenizer, shard, rouge, batch_size)
        return {k: v for k, v in vars(e).items() if isinstance(v, np.ndarray)}

    arrays = sharded(records, local)  # one shard per process when distributed
    return QAEval([r.id for r in records], rouge_l=arrays.pop("rouge_l", None), **arrays)


def _evaluate_local(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], rouge: bool,
                    batch_size: int) -> QAEval:
    answers = token_logprobs(model, tokenizer, records, batch_size=batch_size, moments=False)
    variants: list[Record] = []
    for r in records:
        variants.append(with_answer(r, r.paraphrased_answer or ""))
        variants += [with_answer(r, p) for p in r.perturbed_answers]
    var_lp = token_logprobs(model, tokenizer, variants, batch_size=batch_size, moments=False).mean_lp().numpy()
    tr = np.empty(len(records))
    pos = 0
    for i, r in enumerate(records):
        n_pert = len(r.perturbed_answers)
        tr[i] = np.exp(var_lp[pos + 1: pos + 1 + n_pert].mean() - var_lp[pos])
        pos += 1 + n_pert
    rouge_vals = None
    if rouge:
        preds = greedy_answers(model, tokenizer, records, batch_size=batch_size)
        rouge_vals = np.array([rouge_l_recall(p, r.answer or "") for p, r in zip(preds, records)])
    hit = token_accuracy(answers)
    return QAEval(answers.ids, np.exp(answers.mean_lp().numpy()), tr, rouge_vals, hit,
                  extraction_strength(answers), (hit >= 1.0 - 1e-12).astype(np.float64))


def forget_quality(unlearned: QAEval, retain: QAEval) -> float:
    """TOFU forget quality: KS-test p-value between truth-ratio distributions on the forget set."""
    return ks_p(unlearned.truth_ratio, retain.truth_ratio)


def model_utility(*evals: QAEval) -> float:
    """Harmonic mean of probability, ROUGE-L recall and truth-ratio score over the given sets
    (retain and utility sets), as TOFU's model utility."""
    parts: list[float] = []
    for e in evals:
        if e.rouge_l is None:
            raise UnlearnError("model utility needs ROUGE-L (evaluate with rouge=True)")
        parts += [float(e.prob.mean()), float(e.rouge_l.mean()), truth_ratio_score(e.truth_ratio)]
    if min(parts) <= 0:
        return 0.0
    return float(stats.hmean(parts))
