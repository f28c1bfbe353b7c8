"""`unlearn compare` on the tiny built-in benchmark: table, JSON, CSV, PNG and open-unlearning files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.conftest import write_lines
from unlearn.cli.main import main


@pytest.mark.slow
def test_compare_writes_table_json_csv_png(tmp_path: Path, bench, capsys, monkeypatch) -> None:
    from unlearn.auditors import compare

    out = tmp_path / "cmp"
    cfg = write_lines(tmp_path / "c.yaml", ["preset: tiny", "seed: 3", "common: {max_steps: 2}",
                                            "methods:", "  - graddiff", "  - name: soul",
                                            "    label: soul-npo",
                                            "    args: {loss: npo, lr: 2.0e-4, relearn_probe: true, relearn_steps: 2}"])
    probes = []  # the probe's reference per method: the retain model relearned as that method's probe asks

    def spy(*a, probe_reference=None, **kw):
        probes.append(probe_reference)
        return real(*a, probe_reference=probe_reference, **kw)

    real = compare.make_monitor
    monkeypatch.setattr(compare, "make_monitor", spy)
    assert main(["compare", "--config", str(cfg), "--out", str(out)]) == 0
    assert probes[0] is None and len(probes[1][0]["loss"]) == len(bench.split("forget10")) // 2  # half the people
    screen = capsys.readouterr().out
    assert "soul-npo" in screen and "AUC" in screen and "quality" in screen and "privleak" in screen
    payload = json.loads((out / "compare.json").read_text())
    rows = {r["label"]: r for r in payload["rows"]}
    assert list(rows) == ["retain", "target", "graddiff", "soul-npo"] and payload["seed"] == 3
    assert rows["target"]["auc_loss"] > 0.9 and rows["retain"]["auc_loss"] < 0.75
    for label in ("target", "graddiff", "soul-npo"):  # privleak against the retain row's AUC
        expected = (rows["retain"]["auc_mink"] - rows[label]["auc_mink"]) / (1 - rows["retain"]["auc_mink"]) * 100
        assert rows[label]["privleak_mink"] == pytest.approx(expected, abs=1e-9)
    assert -100 <= rows["target"]["privleak_mink"] <= -90 and rows["retain"]["privleak_mink"] == 0
    for label in ("graddiff", "soul-npo"):
        r = rows[label]
        assert r["steps"] == 2 and r["args"]["seed"] == 3 and r["wall_seconds"] > 0
        assert 0 <= r["forget_quality"] <= 1 and 0 < r["model_utility"] <= 1
        assert r["auc_loss"] <= rows["target"]["auc_loss"]
    assert rows["soul-npo"]["args"]["loss"] == "npo" and rows["soul-npo"]["args"]["max_steps"] == 2
    # every model but the retain one gets the receipt's verdict, relative to the retain model
    assert rows["target"]["verdict"] == "NOT REMOVED" and "verdict" not in rows["retain"]
    for label in ("target", "graddiff", "soul-npo"):
        battery = rows[label]["battery"]
        assert battery["verdict"]["relative"] and rows[label]["verdict"] == battery["verdict"]["status"]
        assert battery["attacks"][0]["attack"] == "as is"
    assert "verdict" in screen and "NOT REMOVED" in screen
    with (out / "compare.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [t["label"] for t in table] == list(rows) and float(table[2]["auc_loss"]) == rows["graddiff"]["auc_loss"]
    png = (out / "compare.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    import matplotlib.image

    img = matplotlib.image.imread(out / "compare.png")
    assert img.shape[0] > 300 and img.shape[1] > 400 and img[..., :3].std() > 0.05  # not a blank canvas
    summary = json.loads((out / "graddiff" / "TOFU_SUMMARY.json").read_text())
    evals = json.loads((out / "graddiff" / "TOFU_EVAL.json").read_text())
    assert summary["forget_quality"] == rows["graddiff"]["forget_quality"]
    assert evals["forget_Q_A_Prob"]["agg_value"] == summary["forget_Q_A_Prob"]
    assert len(evals["forget_truth_ratio"]["value_by_index"]) == len(bench.split("forget10"))


def test_compare_bad_config_is_one_error_line(tmp_path: Path, capsys) -> None:
    bad = write_lines(tmp_path / "bad.yaml", ["methods: [graddiff, bogus]"])
    assert main(["compare", "--config", str(bad), "--preset", "tiny", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "unknown method 'bogus'" in err and len(err.strip().splitlines()) == 1
    extra = write_lines(tmp_path / "extra.yaml", ["methods: [graddiff]", "lr: 3"])
    assert main(["compare", "--config", str(extra), "--out", str(tmp_path / "o")]) == 2
    assert "extra.yaml" in capsys.readouterr().err
    badarg = write_lines(tmp_path / "arg.yaml", ["methods: [{name: npo, args: {betta: 1}}]"])
    assert main(["compare", "--config", str(badarg), "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "arg.yaml: entry 'npo': method 'npo': unknown key 'betta'" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()
