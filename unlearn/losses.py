"""Unlearning losses as plain functions of precomputed sequence log-probs (so methods compose).

Shapes: ``lp`` = summed target log-probs per sequence ``[B]``; ``n`` = target token counts ``[B]``.
Per-example loss l(z) = mean token NLL = -lp/n; L_F, L_R are means over examples.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from unlearn.data import Batch
from unlearn.logprobs import forward_logits


def target_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(lp [B], n [B])``: summed log-probs and counts of the labelled next tokens, from logits."""
    labels = labels[:, 1:]
    mask = labels != -100
    logp = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    tok = logp.gather(-1, labels.clamp(min=0)[..., None])[..., 0] * mask
    return tok.sum(1), mask.sum(1).to(tok.dtype)


def sequence_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """With gradients: ``(lp [B], n [B], logits [B, T, V])`` over the labelled tokens."""
    logits = forward_logits(model, batch)
    return (*target_logprobs(logits, batch.labels), logits)


def nll(lp: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """L = mean over examples of the mean token NLL."""
    return (-lp / n.clamp(min=1)).mean()


def ga_loss(lp: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """Gradient ascent on the forget set: minimise -L_F."""
    return -nll(lp, n)


def graddiff_loss(forget_lp: torch.Tensor, forget_n: torch.Tensor, retain_term: torch.Tensor, gamma: float = 1.0,
                  alpha: float = 1.0) -> torch.Tensor:
    """GradDiff: -gamma L_F + alpha * retain_term (retain NLL or KL)."""
    return gamma * ga_loss(forget_lp, forget_n) + alpha * retain_term


def npo_loss(lp: torch.Tensor, ref_lp: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """NPO (Zhang et al. 2024): -(2/beta) E_F log sigmoid(-beta (log p_theta(y|x) - log p_ref(y|x)))."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (lp - ref_lp)).mean()


def simnpo_loss(lp: torch.Tensor, n: torch.Tensor, beta: float = 4.5, delta: float = 0.0) -> torch.Tensor:
    """SimNPO (Fan et al. 2024): -(2/beta) E_F log sigmoid(beta * lbar - delta), lbar = -lp/n."""
    return -(2.0 / beta) * F.logsigmoid(beta * (-lp / n.clamp(min=1)) - delta).mean()


def retain_nll(lp: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
    """L_R: mean token NLL on the retain set."""
    return nll(lp, n)


def retain_kl(logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(p_ref || p_theta) per next-token distribution, averaged over labelled (answer) positions.

    ``logits, ref_logits: [B, T, V]``; ``labels: [B, T]`` (-100 = not scored)."""
    return target_kl(logits, torch.log_softmax(ref_logits.float(), -1), labels)


def target_kl(logits: torch.Tensor, target_logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """KL(q || p_theta) averaged over labelled positions, where ``target_logp[b, t]`` = log q of the token after
    position t (the distribution the model's prediction at t is pulled to; target matching's loss)."""
    return masked_kl(logits, target_logp, labels[:, 1:] != -100)


def masked_kl(logits: torch.Tensor, target_logp: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """KL(q || p_theta) averaged over the next-token positions where ``keep`` ``[B, T-1]`` is True (answer tokens,
    or every real token for a distillation); ``target_logp`` as in `target_kl`."""
    cur = torch.log_softmax(logits[:, :-1].float(), -1)[keep]
    ref = target_logp[:, :-1].float()[keep]
    return (ref.exp() * (ref - cur)).sum(-1).mean()


def token_gap(logits: torch.Tensor, target_logp: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over labelled tokens of Huber(log p_theta(y_t) - log q(y_t)) (squared within 1 nat, linear beyond, so a
    token the target finds very unlikely does not swamp the step): how far the answer's own tokens are from the
    target's level (``target_logp`` as in `target_kl`)."""
    mask = labels[:, 1:] != -100
    y = labels[:, 1:].clamp(min=0)[..., None]
    cur = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, y)[..., 0]
    ref = target_logp[:, :-1].float().gather(-1, y)[..., 0]
    return F.huber_loss(cur[mask], ref[mask], delta=1.0)
