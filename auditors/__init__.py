"""The judge: turns attack outputs into metrics and verdicts with p-values."""
