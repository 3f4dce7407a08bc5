"""`doc2atom eval` end to end with the real embedded models on a small fictional SQuAD-format set."""

import json
from pathlib import Path

import pytest

from serving.evaluate import cli

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "eval_fixture.json"
MODE_KEYS = {"f1", "em", "acc", "refusal_accuracy", "false_refusal", "answerable", "unanswerable"}


def test_eval_json_shape_and_context_beats_base(tmp_path, capsys):
    kb = tmp_path / "kb"
    argv = [str(FIXTURE), "--kb", str(kb), "--modes", "base,context,atoms", "--compose-k", "1,2", "--json",
            "--save", str(tmp_path / "preds")]
    assert cli.main(argv) == 0
    res = json.loads(capsys.readouterr().out)
    assert {"dataset", "n", "modes", "router", "composition", "timings_s"} <= set(res)
    assert res["n"] == 11
    for m in ("base", "context", "atoms"):
        assert MODE_KEYS <= set(res["modes"][m])
        assert res["modes"][m]["answerable"] == 9 and res["modes"][m]["unanswerable"] == 2
    assert 0.0 <= res["router"]["recall@1"] <= res["router"]["recall@8"] <= 1.0
    assert res["composition"]["k"] == [1, 2] and len(res["composition"]["accuracy"]) == 2
    base, ctx = res["modes"]["base"], res["modes"]["context"]
    # fictional facts: the closed-book model cannot know them; with the routed atoms in the prompt it can
    assert ctx["acc"] > base["acc"]
    assert ctx["short"]["f1"] > base["short"]["f1"]
    assert (tmp_path / "preds" / "predictions.jsonl").exists()
    # a second run finds every paragraph compiled already
    assert cli.main(argv[:-2]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["timings_s"]["ingest"] < res["timings_s"]["ingest"]
