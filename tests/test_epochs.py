"""The epochs suite: a Shakespeare slice repeated for many epochs; curves, best figures, crossings."""

from __future__ import annotations

import json

import pytest

from dlm.data.corpora import load_corpus
from dlm.errors import DlmError
from dlm.evaluation.epochs import Contender, EpochsSuite, crossing, run_epochs, write_epochs_report
from dlm.models.transformer import PRESETS


def curve(points):
    return [{"epoch": e, "val_bits_per_char": v} for e, v in points]


def test_crossing_interpolates_where_one_curve_goes_below_the_other():
    ar = curve([(0, 4.0), (10, 2.0), (20, 2.5), (30, 3.0)])  # overfits after epoch 10
    masked = curve([(0, 4.5), (10, 3.0), (20, 2.5), (30, 2.0)])
    assert crossing(masked, ar) == pytest.approx(20.0)
    assert crossing(curve([(0, 5.0), (30, 4.0)]), ar) is None, "always above: no crossing"
    assert crossing(curve([(0, 1.0), (30, 1.0)]), ar) == 0.0, "below from the start"


def test_the_slice_is_the_start_of_the_training_text_and_validation_is_held_out():
    corpus = load_corpus("shakespeare-slice:chars=5000,validation_chars=2000")
    assert len(corpus.train) == 1 and 2500 < len(corpus.train[0]) <= 5000 and corpus.train[0].endswith("\n")
    assert len(corpus.validation[0]) <= 2000
    assert corpus.validation[0][:200] not in "".join(load_corpus("shakespeare").train)
    with pytest.raises(DlmError, match="no parameter 'size'"):
        load_corpus("shakespeare-slice:size=3")


def test_the_epochs_suite_writes_curves_for_every_model(tmp_path, monkeypatch):
    monkeypatch.setitem(PRESETS, "micro", dict(d_model=32, n_layers=1, n_heads=2))
    suite = EpochsSuite("test", chars=2000, epochs=3, preset="micro", seq_len=32, batch_size=8, evals=3,
                        eval_chunks=2, validation_chars=1000,
                        contenders=(Contender("masked", "masked"), Contender("ar", "ar"),
                                    Contender("ar-wd", "ar", (("weight_decay", 0.5),))))
    result = run_epochs(suite, tmp_path / "cache", log=lambda text: None)
    write_epochs_report(result, tmp_path / "out")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert set(report["curves"]) == {"masked", "ar", "ar-wd"}
    for name, points in report["curves"].items():
        assert len(points) >= 3, name
        assert points[-1]["epoch"] == pytest.approx(3, rel=0.15)
        assert report["best"][name]["val_bits_per_char"] == min(p["val_bits_per_char"] for p in points)
    assert set(report["crossings"]) == {"masked vs ar", "masked vs ar-wd"}
    assert report["models"]["masked"]["params"] == report["models"]["ar"]["params"]
    assert (tmp_path / "out" / "epochs.png").exists()
