"""Conformance with published definitions: each expected value is computed here by a direct transcription
of the reference code (open-unlearning, MUSE, TOFU, the Min-K% / Min-K%++ authors), never by our functions."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from tests.conftest import make_tiny_model
from unlearn.attacks.scores import min_k_count, mink_score, minkpp_score
from unlearn.auditors.metrics import privleak
from unlearn.auditors.tofu import (
    QAEval,
    evaluate_qa,
    forget_quality,
    model_utility,
    model_utility_parts,
    rouge_l,
    rouge_l_recall,
    truth_ratio_closer_to_1,
    truth_ratio_true_better,
)
from unlearn.data import encode, qa_record
from unlearn.logprobs import TokenLogProbs


def test_privleak_is_muse_and_open_unlearning_privleak() -> None:
    def reference(auc_u: float, auc_r: float) -> float:  # open-unlearning evals/metrics/privacy.py::privleak
        score, ref = 1 - auc_u, 1 - auc_r
        return (score - ref) / (ref + 1e-10) * 100

    for auc_u, auc_r in [(1.0, 0.5), (0.999, 0.52), (0.5, 0.5), (0.3, 0.55), (0.62, 0.48), (0.0, 0.9)]:
        assert privleak(auc_u, auc_r) == pytest.approx(reference(auc_u, auc_r), rel=1e-8, abs=1e-6)
    assert privleak(1.0, 0.52) == pytest.approx(-100.0)  # the original model: fully detectable
    assert privleak(0.3, 0.5) > 0  # over-unlearned: positive
    assert privleak(0.7, 1.0) is None


def test_min_k_token_count_is_the_floor_every_reference_takes() -> None:
    ks = [0.05, 0.1, 0.2, 0.29, 0.3, 0.4, 0.55, 0.6, 0.7, 1.0]
    for T in range(1, 260):
        for k in ks:
            assert int(min_k_count(torch.tensor([T]), k)[0]) == max(1, int(T * k)), (T, k)
    assert int(min_k_count(torch.tensor([100]), 0.55)[0]) == 55  # 0.55 * 100 = 55.000000000000007


def _tlp(lp: list[list[float]], mu: list[list[float]] | None = None, var: list[list[float]] | None = None,
         eos_last: bool = True) -> TokenLogProbs:
    width = max(len(r) for r in lp)

    def pad(rows: list[list[float]], fill: float) -> torch.Tensor:
        return torch.tensor([r + [fill] * (width - len(r)) for r in rows], dtype=torch.float64)

    mask = torch.tensor([[True] * len(r) + [False] * (width - len(r)) for r in lp])
    zeros = [[0.0] * len(r) for r in lp]
    return TokenLogProbs([str(i) for i in range(len(lp))], pad(lp, 0.0), pad(mu or zeros, 0.0),
                         pad(var or [[1.0] * len(r) for r in lp], 1.0), pad(zeros, 0.0), mask,
                         torch.tensor([eos_last] * len(lp)))


def test_min_k_and_min_k_plus_plus_match_open_unlearning_on_hand_log_probs() -> None:
    rng = np.random.default_rng(0)
    lps = [list(-rng.exponential(2.0, size=n)) for n in (1, 2, 3, 7, 11, 26)]
    mus = [list(-rng.exponential(1.0, size=len(r))) for r in lps]
    variances = [list(rng.uniform(0.2, 3.0, size=len(r))) for r in lps]
    k = 0.4

    def mink_reference(lp: list[float]) -> float:  # open-unlearning mia/min_k.py, on tokens without the EOS
        lp = np.array(lp[:-1] if len(lp) > 1 else lp)
        num_k = max(1, int(len(lp) * k))
        return -np.mean(np.sort(lp)[:num_k])  # loss-like there: minus ours

    def minkpp_reference(lp: list[float], mu: list[float], var: list[float]) -> float:  # mia/min_k_plus_plus.py
        keep = slice(0, len(lp) - 1 if len(lp) > 1 else 1)
        scores = (np.array(lp[keep]) - np.array(mu[keep])) / np.sqrt(np.array(var[keep]))
        num_k = max(1, int(len(scores) * k))
        return -np.mean(sorted(scores)[:num_k])

    t = _tlp(lps, mus, variances)
    ours_k, ours_pp = mink_score(t, k).numpy(), minkpp_score(t, k).numpy()
    for i in range(len(lps)):
        assert ours_k[i] == pytest.approx(-mink_reference(lps[i]), abs=1e-12)
        assert ours_pp[i] == pytest.approx(-minkpp_reference(lps[i], mus[i], variances[i]), abs=1e-12)
    # text records carry no EOS: every token counts
    plain = mink_score(_tlp(lps, eos_last=False), k).numpy()
    assert plain[-1] == pytest.approx(np.mean(np.sort(lps[-1])[:max(1, int(len(lps[-1]) * k))]), abs=1e-12)


def test_truth_ratio_aggregators_and_forget_quality() -> None:
    tr = np.array([0.2, 0.9, 1.0, 1.7, 4.0, 0.05])
    assert truth_ratio_closer_to_1(tr) == pytest.approx(np.mean(np.minimum(tr, 1 / (tr + 1e-10))), rel=1e-8)
    assert truth_ratio_true_better(tr) == pytest.approx(np.mean(np.maximum(0, 1 - tr)))
    rng = np.random.default_rng(1)
    a, b = rng.lognormal(0, 1, 40), rng.lognormal(0.5, 1, 40)

    def qa(trs: np.ndarray) -> QAEval:
        n = len(trs)
        return QAEval([str(i) for i in range(n)], np.ones(n), np.ones(n), trs, None, np.ones(n), np.ones(n),
                      np.ones(n))

    # open-unlearning evals/metrics/utils.py::get_forget_quality (KS on 1/TR: the same p-value)
    expected = stats.ks_2samp(1 / (a + 1e-10), 1 / (b + 1e-10)).pvalue
    assert forget_quality(qa(a), qa(b)) == pytest.approx(expected)


def test_rouge_l_is_rouge_score_with_the_porter_stemmer() -> None:
    # by hand: reference "the cat ran" -> [the, cat, ran]; "The cats were running." stems to
    # [the, cat, were, run]: LCS "the cat" = 2 of 3 reference tokens (1 without stemming)
    assert rouge_l_recall("The cats were running.", "the cat ran") == pytest.approx(2 / 3)
    assert rouge_l_recall("Kalo was born in Tolmere.", "Kalo Venra was born in the town of Tolmere.") == \
        pytest.approx(5 / 9)
    assert rouge_l_recall("", "x") == 0.0
    f = rouge_l("the cat sat", "the cat sat on the mat")  # P = 3/3, R = 3/6
    assert f.fmeasure == pytest.approx(2 * 1 * 0.5 / 1.5)


def _manual_mean_logprob(model: torch.nn.Module, tok, question: str, answer: str) -> float:
    ids, labels = encode(qa_record("x", question, answer), tok)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0].double()
    lps = [float(torch.log_softmax(logits[t], -1)[labels[t + 1]]) for t in range(len(ids) - 1)
           if labels[t + 1] != -100]
    return sum(lps) / len(lps)


def test_tofu_probabilities_and_truth_ratios_on_a_tiny_model(tiny_tokenizer) -> None:
    model = make_tiny_model(tiny_tokenizer, seed=5)
    recs = [qa_record("a", "Where was Kalo Venra born?", "In Tolmere.", paraphrased_answer="Tolmere.",
                      perturbed_answer=["In Brask.", "In Quillon.", "In Istra."]),
            qa_record("b", "What pet does Mira Dun keep?", "A parrot.", paraphrased_answer="Her parrot.",
                      perturbed_answer=["A dog.", "A cat."])]
    forget_side = evaluate_qa(model, tiny_tokenizer, recs, rouge=False)
    answer_side = evaluate_qa(model, tiny_tokenizer, recs, rouge=False, true_side="answer")
    for i, r in enumerate(recs):
        p = math.exp(_manual_mean_logprob(model, tiny_tokenizer, r.question, r.answer))
        para = math.exp(_manual_mean_logprob(model, tiny_tokenizer, r.question, r.paraphrased_answer))
        pert_lp = [_manual_mean_logprob(model, tiny_tokenizer, r.question, w) for w in r.perturbed_answers]
        pert_geo = math.exp(sum(pert_lp) / len(pert_lp))  # open-unlearning: mean of the avg losses
        assert forget_side.prob[i] == pytest.approx(p, rel=1e-5)
        assert forget_side.truth_ratio[i] == pytest.approx(pert_geo / para, rel=1e-5)
        assert answer_side.truth_ratio[i] == pytest.approx(pert_geo / p, rel=1e-5)
        # probability_w_options: correct / (correct + sum of wrong)
        expected = p / (p + sum(math.exp(x) for x in pert_lp))
        assert forget_side.prob_normalised[i] == pytest.approx(expected, rel=1e-5)


def test_model_utility_is_the_harmonic_mean_of_tofu_nine_numbers() -> None:
    def qa(prob, norm, tr, rouge, side) -> QAEval:
        n = len(prob)
        return QAEval([str(i) for i in range(n)], np.array(prob), np.array(norm), np.array(tr), np.array(rouge),
                      np.ones(n), np.ones(n), np.ones(n), true_side=side)

    retain = qa([0.9, 0.7], [0.5, 0.5], [0.3, 0.6], [1.0, 0.8], "paraphrased")
    ra = qa([0.4, 0.2], [0.8, 0.6], [0.5, 0.2], [0.9, 0.7], "answer")
    wf = qa([0.3, 0.3], [0.7, 0.9], [0.1, 1.4], [0.6, 0.6], "answer")
    nine = [0.8, 0.9, np.mean([0.7, 0.4]),  # retain: prob, ROUGE, max(0, 1 - TR)
            0.7, 0.8, np.mean([0.5, 0.8]),  # real authors: normalised prob, ROUGE, TR
            0.8, 0.6, np.mean([0.9, 0.0])]  # world facts
    assert list(model_utility_parts(retain, ra, wf).values()) == pytest.approx(nine)
    assert model_utility(retain, ra, wf) == pytest.approx(9 / sum(1 / x for x in nine))  # scipy.stats.hmean
    from unlearn.errors import UnlearnError

    with pytest.raises(UnlearnError, match="answer on the true side"):
        model_utility(retain, retain, wf)


@pytest.mark.slow
def test_muse_verbmem_and_knowmem_separate_the_trained_model_from_the_retrained_one(bench, tmp_path) -> None:
    from unlearn.auditors.muse import knowmem_rouge, split_continuation, verbmem_rouge
    from unlearn.data import Record, text_record
    from unlearn.model import load_model

    forget = bench.split("forget10")[:40]
    continuations = [Record(r.id, r.prompt, r.response) for r in forget]  # MUSE's {prompt, gt} form
    target, tok = load_model(bench.target)
    retain, _ = load_model(bench.retain)
    for fn, recs in ((verbmem_rouge, continuations), (knowmem_rouge, forget)):
        t, r = fn(target, tok, recs).mean(), fn(retain, tok, recs).mean()
        assert t > 0.9 and r < t - 0.2, (fn.__name__, t, r)
    text = text_record("t", "one two three four five six seven eight nine ten eleven twelve")
    prompt, rest = split_continuation(text, tok, 4)
    assert (prompt + rest).replace(" ", "") == text.response.replace(" ", "")
    assert len(tok(prompt, add_special_tokens=False)["input_ids"]) == 4
