"""TOFU-style metrics on QA sets: probability, truth ratio, ROUGE-L, memorisation, forget quality, utility."""

from __future__ import annotations

import functools
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
from unlearn.jsonio import JsonObject, show
from unlearn.logprobs import TokenLogProbs, token_logprobs


@dataclass
class QAEval:
    """Per-record metrics ``[N]`` of one model on one QA set (TOFU, Maini et al. 2024; open-unlearning)."""

    ids: list[str]
    prob: np.ndarray  # p~(answer) = exp(-mean token NLL)  (open-unlearning ``probability``)
    prob_normalised: np.ndarray  # p~(answer) / (p~(answer) + sum p~(perturbed))  (``probability_w_options``)
    truth_ratio: np.ndarray  # R = p~(perturbed) / p~(true side), perturbed combined geometrically
    rouge_l: np.ndarray | None  # ROUGE-L recall of the greedy answer (rouge_score, Porter stemmer)
    exact_memorisation: np.ndarray  # fraction of answer tokens that are the argmax
    extraction_strength: np.ndarray  # 1 - (shortest answer prefix after which the rest is argmax) / |a|
    exact_match: np.ndarray  # greedy answer == reference
    true_side: str = "paraphrased"  # the truth ratio's true side: paraphrased answer, or the answer itself

    def summary(self) -> dict[str, float]:
        out = {"prob": float(self.prob.mean()), "prob_normalised": float(self.prob_normalised.mean()),
               "truth_ratio_closer_to_1": truth_ratio_closer_to_1(self.truth_ratio),
               "truth_ratio_true_better": truth_ratio_true_better(self.truth_ratio),
               "exact_memorisation": float(self.exact_memorisation.mean()),
               "extraction_strength": float(self.extraction_strength.mean()),
               "exact_match": float(self.exact_match.mean())}
        if self.rouge_l is not None:
            out["rouge_l_recall"] = float(self.rouge_l.mean())
        return out


def truth_ratio_closer_to_1(tr: np.ndarray) -> float:
    """TOFU's forget-set truth ratio (open-unlearning ``truth_ratio`` with ``closer_to_1_better``):
    mean of min(R, 1/R); 1 when true and perturbed answers are equally likely, as for a model that never
    saw the facts."""
    return float(np.minimum(tr, 1.0 / tr).mean())


def truth_ratio_true_better(tr: np.ndarray) -> float:
    """TOFU's truth ratio on retain / real authors / world facts (open-unlearning ``true_better``):
    mean of max(0, 1 - R); high when the true answer is preferred."""
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


@functools.cache
def _rouge_scorer() -> Any:
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(prediction: str, reference: str) -> Any:
    """ROUGE-L of ``prediction`` against ``reference`` as TOFU, MUSE and open-unlearning compute it: the
    ``rouge_score`` package with the Porter stemmer (``.recall``, ``.precision``, ``.fmeasure``)."""
    return _rouge_scorer().score(reference, prediction)["rougeL"]


def rouge_l_recall(prediction: str, reference: str) -> float:
    """TOFU's ROUGE (open-unlearning ``rougeL_recall``)."""
    return float(rouge_l(prediction, reference).recall)


def evaluate_qa(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], *, rouge: bool = True,
                batch_size: int = 32, true_side: str = "paraphrased") -> QAEval:
    """All TOFU metrics of ``model`` on QA ``records``: one pass on the answers, one on the true-side +
    perturbed answers, and (``rouge``) one greedy decode. ``true_side``: ``paraphrased`` (TOFU's forget and
    retain sets) or ``answer`` (TOFU's real_authors / world_facts, which carry no paraphrase)."""
    if true_side not in ("paraphrased", "answer"):
        raise UnlearnError(f"true_side must be paraphrased or answer, got '{true_side}'")
    need_para = true_side == "paraphrased"
    bad = [r.id for r in records if not r.is_qa or not r.perturbed_answers
           or (need_para and r.paraphrased_answer is None)]
    if bad:
        need = "paraphrased_answer and perturbed_answer" if need_para else "perturbed_answer"
        raise UnlearnError(f"TOFU metrics need QA records with {need}; missing on {len(bad)} record(s), "
                           f"e.g. '{show(bad[0])}'")

    def local(shard: list[Record]) -> dict[str, np.ndarray]:
        e = _evaluate_local(model, tokenizer, shard, rouge, batch_size, need_para)
        return {k: v for k, v in vars(e).items() if isinstance(v, np.ndarray)}

    arrays = sharded(records, local)  # one shard per process when distributed
    return QAEval([r.id for r in records], rouge_l=arrays.pop("rouge_l", None), true_side=true_side, **arrays)


def _evaluate_local(model: torch.nn.Module, tokenizer: Any, records: Sequence[Record], rouge: bool,
                    batch_size: int, paraphrased: bool) -> QAEval:
    answers = token_logprobs(model, tokenizer, records, batch_size=batch_size, moments=False)
    answer_lp = answers.mean_lp().numpy()
    variants: list[Record] = []
    for r in records:
        if paraphrased:
            variants.append(with_answer(r, r.paraphrased_answer or ""))
        variants += [with_answer(r, p) for p in r.perturbed_answers]
    var_lp = token_logprobs(model, tokenizer, variants, batch_size=batch_size, moments=False).mean_lp().numpy()
    tr, normalised = np.empty(len(records)), np.empty(len(records))
    pos = 0
    for i, r in enumerate(records):
        true_lp = var_lp[pos] if paraphrased else answer_lp[i]
        pos += int(paraphrased)
        pert = var_lp[pos: pos + len(r.perturbed_answers)]
        pos += len(r.perturbed_answers)
        tr[i] = np.exp(pert.mean() - true_lp)
        normalised[i] = np.exp(answer_lp[i]) / (np.exp(answer_lp[i]) + np.exp(pert).sum())
    rouge_vals = None
    if rouge:
        preds = greedy_answers(model, tokenizer, records, batch_size=batch_size)
        rouge_vals = np.array([rouge_l_recall(p, r.answer or "") for p, r in zip(preds, records)])
    hit = token_accuracy(answers)
    return QAEval(answers.ids, np.exp(answer_lp), normalised, tr, rouge_vals, hit, extraction_strength(answers),
                  (hit >= 1.0 - 1e-12).astype(np.float64))


def forget_quality(unlearned: QAEval, retain: QAEval) -> float:
    """TOFU forget quality (open-unlearning ``ks_test``): the two-sample KS p-value between the truth-ratio
    distributions of the unlearned and the retain model on the forget set."""
    return ks_p(unlearned.truth_ratio, retain.truth_ratio)


TOFU_UTILITY_PARTS = ("retain_Q_A_Prob", "retain_Q_A_ROUGE", "retain_Truth_Ratio", "ra_Q_A_Prob_normalised",
                      "ra_Q_A_ROUGE", "ra_Truth_Ratio", "wf_Q_A_Prob_normalised", "wf_Q_A_ROUGE", "wf_Truth_Ratio")


def harmonic_mean(values: Sequence[float]) -> float:
    """scipy's harmonic mean, 0 when any value is 0 (TOFU's utility with a zero part)."""
    return 0.0 if min(values) <= 0 else float(stats.hmean(values))


def model_utility_parts(retain: QAEval, real_authors: QAEval, world_facts: QAEval) -> dict[str, float]:
    """The nine numbers of TOFU's model utility, under open-unlearning's names: on the retain set the answer
    probability, ROUGE-L recall and truth ratio (paraphrase as true side, ``true_better``); on real authors
    and world facts the probability normalised over the options, ROUGE-L recall and truth ratio with the
    answer as true side (``true_better``)."""
    for name, e, side in (("retain", retain, "paraphrased"), ("real_authors", real_authors, "answer"),
                          ("world_facts", world_facts, "answer")):
        if e.rouge_l is None:
            raise UnlearnError(f"model utility needs ROUGE-L on {name} (evaluate with rouge=True)")
        if e.true_side != side:
            raise UnlearnError(f"model utility: the {name} truth ratio must have the {side} on the true side")
    assert retain.rouge_l is not None and real_authors.rouge_l is not None and world_facts.rouge_l is not None
    return {"retain_Q_A_Prob": float(retain.prob.mean()), "retain_Q_A_ROUGE": float(retain.rouge_l.mean()),
            "retain_Truth_Ratio": truth_ratio_true_better(retain.truth_ratio),
            "ra_Q_A_Prob_normalised": float(real_authors.prob_normalised.mean()),
            "ra_Q_A_ROUGE": float(real_authors.rouge_l.mean()),
            "ra_Truth_Ratio": truth_ratio_true_better(real_authors.truth_ratio),
            "wf_Q_A_Prob_normalised": float(world_facts.prob_normalised.mean()),
            "wf_Q_A_ROUGE": float(world_facts.rouge_l.mean()),
            "wf_Truth_Ratio": truth_ratio_true_better(world_facts.truth_ratio)}


def model_utility(retain: QAEval, real_authors: QAEval, world_facts: QAEval) -> float:
    """TOFU's model utility (open-unlearning ``hm_aggregate``): the harmonic mean of the nine numbers of
    ``model_utility_parts``."""
    return harmonic_mean(list(model_utility_parts(retain, real_authors, world_facts).values()))


def retain_utility(retain: QAEval) -> float:
    """Our own, for data without real authors / world facts: the harmonic mean of the three retain-set
    numbers of TOFU's utility (probability, ROUGE-L recall, truth ratio ``true_better``). Never exported
    as ``model_utility``."""
    if retain.rouge_l is None:
        raise UnlearnError("retain utility needs ROUGE-L (evaluate with rouge=True)")
    return harmonic_mean([float(retain.prob.mean()), float(retain.rouge_l.mean()),
                   truth_ratio_true_better(retain.truth_ratio)])


def forget_summary(fe: QAEval) -> dict[str, float]:
    """The forget-set numbers of TOFU's evaluation, under our row keys (``OPEN_UNLEARNING_NAMES`` maps them)."""
    assert fe.rouge_l is not None
    return {"forget_prob": float(fe.prob.mean()), "forget_rouge": float(fe.rouge_l.mean()),
            "forget_truth_ratio": truth_ratio_closer_to_1(fe.truth_ratio),
            "extraction_strength": float(fe.extraction_strength.mean()),
            "exact_memorisation": float(fe.exact_memorisation.mean())}


# our row key -> open-unlearning's TOFU_SUMMARY key; each is computed by the definition that name has there
OPEN_UNLEARNING_NAMES = {
    "forget_quality": "forget_quality", "model_utility": "model_utility", "forget_prob": "forget_Q_A_Prob",
    "forget_rouge": "forget_Q_A_ROUGE", "forget_truth_ratio": "forget_truth_ratio",
    "extraction_strength": "extraction_strength", "exact_memorisation": "exact_memorization",
    "privleak_mink": "privleak", "auc_loss": "mia_loss", "auc_zlib": "mia_zlib", "auc_mink": "mia_min_k",
    "auc_minkpp": "mia_min_k_plus_plus"}


def tofu_summary(model: torch.nn.Module, tokenizer: Any, forget: Sequence[Record], *,
                 retain_model: torch.nn.Module | None = None, retain_eval: Sequence[Record] = (),
                 real_authors: Sequence[Record] = (), world_facts: Sequence[Record] = (),
                 batch_size: int = 32) -> JsonObject:
    """TOFU's evaluation under open-unlearning's TOFU_SUMMARY names: forget_Q_A_Prob, forget_Q_A_ROUGE,
    forget_truth_ratio, extraction_strength, exact_memorization; forget_quality with a retain model; and
    model_utility with its nine parts when the retain / real-authors / world-facts sets are given."""
    fe = evaluate_qa(model, tokenizer, forget, batch_size=batch_size)
    out: JsonObject = {OPEN_UNLEARNING_NAMES[k]: v for k, v in forget_summary(fe).items()}
    if retain_model is not None:
        out["forget_quality"] = forget_quality(fe, evaluate_qa(retain_model, tokenizer, forget, rouge=False,
                                                               batch_size=batch_size))
    if retain_eval and real_authors and world_facts:
        evals = [evaluate_qa(model, tokenizer, retain_eval, batch_size=batch_size),
                 *(evaluate_qa(model, tokenizer, s, batch_size=batch_size, true_side="answer")
                   for s in (real_authors, world_facts))]
        parts = model_utility_parts(*evals)
        out["model_utility"] = harmonic_mean(list(parts.values()))
        out.update(parts)
    return out
