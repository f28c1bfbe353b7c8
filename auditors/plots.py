"""PNG figures: ROC curves and score histograms of an audit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from unlearn.auditors.audit import AuditReport
from unlearn.auditors.metrics import roc_curve


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_audit(report: AuditReport, path: str | Path, title: str = "") -> Path:
    plt = _plt()
    names = [r.score for r in report.results]
    cols = min(3, 1 + len(names))
    rows = -(-(1 + len(names)) // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(4.4 * cols, 3.6 * rows), squeeze=False)
    axes = grid.ravel()
    for ax in axes[1 + len(names):]:
        ax.axis("off")
    roc_ax = axes[0]
    for name in names:
        m, n = np.array(report.scores["members"][name]), np.array(report.scores["nonmembers"][name])
        fpr, tpr = roc_curve(m, n)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {report.result(name).auc:.3f})")
    roc_ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC: members vs non-members")
    roc_ax.legend(fontsize=7, loc="lower right")
    for ax, name in zip(axes[1:], names):
        m, n = np.array(report.scores["members"][name]), np.array(report.scores["nonmembers"][name])
        bins = np.histogram_bin_edges(np.concatenate([m, n]), bins=30)
        ax.hist(n, bins=bins, alpha=0.6, label="non-members", density=True)
        ax.hist(m, bins=bins, alpha=0.6, label="members", density=True)
        ax.set(title=f"{name}: p = {report.result(name).p_holm:.1e}", xlabel="score (higher = member)")
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_compare(rows: list[dict], path: str | Path, title: str = "") -> Path:
    """Forget quality (log scale) against model utility, one point per method; target and retain marked."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    for r in rows:
        if r.get("forget_quality") is None or r.get("model_utility") is None:
            continue
        fq = max(float(r["forget_quality"]), 1e-12)
        style = {"target": dict(marker="X", s=120, c="tab:red"), "retain": dict(marker="*", s=200, c="tab:green")}
        ax.scatter([fq], [r["model_utility"]], zorder=3, **style.get(r["label"], dict(marker="o", s=50)))
        ax.annotate(r["label"], (fq, r["model_utility"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set(xlabel="forget quality (KS p vs retain model; higher = closer to retraining)",
           ylabel="model utility", title=title or "unlearning methods: forget quality vs utility")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
