"""PNG figures: ROC curves and score histograms of an audit."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from auditors.audit import AuditReport
from auditors.metrics import roc_curve


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
