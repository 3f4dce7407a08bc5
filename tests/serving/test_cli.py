import json
import os
import subprocess
import sys

import pytest

from conftest import ROOT, fast_compile
from serving import cli


def _run(args, capsys):
    code = cli.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_help_does_not_import_heavy_libraries():
    code = ("import sys\nfrom serving import cli\n"
            "try:\n    cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('torch', 'spacy', 'faiss', 'transformers') if m in sys.modules]\n"
            "print('HEAVY=' + ','.join(heavy))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert "HEAVY=\n" in r.stdout


def test_ask_help_lists_modes(capsys):
    with pytest.raises(SystemExit):
        cli.main(["ask", "--help"])
    out = capsys.readouterr().out
    assert "--mode" in out and "--explain" in out and "--kb" in out


def test_wrong_paths_get_clear_messages(tmp_path, capsys):
    code, _, err = _run(["ingest", str(tmp_path / "missing.txt"), "--kb", str(tmp_path / "kb")], capsys)
    assert code == 2 and "no such file" in err and "Traceback" not in err
    code, _, err = _run(["ask", "hi?", "--kb", str(tmp_path / "nokb")], capsys)
    assert code == 3 and "no knowledge base" in err and "doc2atom ingest" in err


def test_atomize_json(capsys):
    code, out, _ = _run(["atomize", str(ROOT / "data" / "sample" / "korrin_bridge.txt"), "--json"], capsys)
    assert code == 0
    atoms = json.loads(out)["atoms"]
    assert atoms and set(atoms[0]) == {"id", "type", "text", "key", "source"}
    src = (ROOT / "data" / "sample" / "korrin_bridge.txt").read_text()
    for a in atoms:  # each span is the source of its atom's statement
        assert src[a["source"]["start"]:a["source"]["end"]].rstrip(".") in a["text"]


def test_bad_compile_config_is_named(tmp_path, capsys):
    code, _, err = _run(["ingest", str(ROOT / "data" / "sample"), "--kb", str(tmp_path / "kb"),
                         "--compile-config", '{"rank": 99}'], capsys)
    assert code == 2 and "rank" in err


def test_end_to_end_cli_on_tiny_model(tmp_path, tiny_base, sample_copy, capsys):
    kb = str(tmp_path / "kb")
    common = ["--kb", kb, "--base-model", str(tiny_base)]
    code, out, _ = _run(["ingest", str(sample_copy / "korrin_bridge.txt"), "--json",
                         "--compile-config", fast_compile().model_dump_json()] + common, capsys)
    assert code == 0 and json.loads(out)["atoms"] == 5
    code, out, _ = _run(["ask", "Who designed the Korrin Bridge?", "--json", "--max-new-tokens", "4"] + common, capsys)
    ans = json.loads(out)
    assert set(ans) == {"answer", "refused", "atoms", "unsupported", "timings_ms"} and ans["atoms"]
    sig = ans["atoms"][0]["signals"]  # the router's evidence travels with each fired atom
    assert set(sig) == {"dense", "lexical", "cover", "learned", "hop"} and sig["hop"] == 1
    assert abs(sig["learned"] - ans["atoms"][0]["score"]) < 1e-3 and 0 < sig["dense"] <= 1
    code, out, _ = _run(["ask", "Who designed the Korrin Bridge?", "--explain", "--max-new-tokens", "4"] + common,
                        capsys)
    header = out.splitlines()[-1 - len(ans["atoms"])].split()
    assert header[:8] == ["atom", "type", "score", "dense", "bm25", "cover", "hop", "weight"]
    assert "korrin_bridge.txt:" in out
    code, out, _ = _run(["ask", "What is the boiling point of liquid nitrogen in kelvin?", "--explain",
                         "--max-new-tokens", "4"] + common, capsys)
    assert code == 0 and "no atoms fired: best candidate a" in out and "< threshold" in out
    code, out, _ = _run(["atoms", "list", "--json", "--kb", kb], capsys)
    ids = [a["id"] for a in json.loads(out)["atoms"]]
    # --with: a chosen atom is composed only where the router scores it as covering the question
    q_off = ["ask", "What is the boiling point of liquid nitrogen in kelvin?", "--json", "--allow-base",
             "--max-new-tokens", "4", "--with", ids[0]] + common
    code, out, _ = _run(q_off, capsys)
    assert code == 0 and json.loads(out)["atoms"] == []
    code, out, _ = _run(q_off + ["--no-gate"], capsys)
    assert code == 0 and [(a["id"], a["weight"]) for a in json.loads(out)["atoms"]] == [(ids[0], 1.0)]
    code, _, err = _run(["ask", "Who designed the Korrin Bridge?", "--with", "a999999"] + common, capsys)
    assert code == 3 and "a999999" in err
    code, out, _ = _run(["atoms", "show", ids[0], "--kb", kb], capsys)
    assert code == 0 and "source_text" in out
    code, _, err = _run(["atoms", "show", "a999999", "--kb", kb], capsys)
    assert code == 3 and "no atom" in err
    code, out, _ = _run(["forget", str(sample_copy / "korrin_bridge.txt"), "--json"] + common, capsys)
    assert json.loads(out)["atoms_removed"] == 5
