"""The pipeline on a tiny random base model: real atomizer, embedder, FAISS and store, fast compile."""

import re

import numpy as np
import pytest
import torch

from conftest import fast_compile
from doc2atom import errors
from router.index import KeyIndex
from serving.pipeline import REFUSAL, KnowledgeBase


@pytest.fixture()
def kb(tmp_path, tiny_base, sample_copy):
    k = KnowledgeBase(tmp_path / "kb", base_model=str(tiny_base), compile_config=fast_compile(), progress=False)
    k.ingest([str(sample_copy)])
    return k


def _index_matches_store(k: KnowledgeBase) -> bool:
    disk = KeyIndex.open(k.path, k.store, k.embedder().dim, write=False)
    return np.array_equal(disk.ids(), k.store.rowids())


def test_ingest_builds_store_shards_and_index(kb, sample_copy):
    atoms = kb.atoms()
    assert len(atoms) >= 20
    assert len(kb.store.documents()) == 5
    assert _index_matches_store(kb)
    assert list(kb.store.shards.glob("*.safetensors"))
    # every atom's span points at the source text it states (resolved pronouns may differ)
    for a in atoms:
        doc = kb.store.document(a.source.doc)
        assert 0 <= a.source.start < a.source.end <= len(doc["text"])
        span = set(re.findall(r"\w+", doc["text"][a.source.start:a.source.end].lower()))
        assert len(span & set(re.findall(r"\w+", a.text.lower()))) >= 0.6 * len(span), (a.text, span)


def test_reingest_unchanged_is_a_noop_and_changed_file_replaces_atoms(kb, sample_copy):
    before = {a.id for a in kb.atoms()}
    rep = kb.ingest([str(sample_copy)])
    assert rep.added == [] and len(rep.unchanged) == 5
    assert {a.id for a in kb.atoms()} == before
    f = sample_copy / "korrin_bridge.txt"
    f.write_text(f.read_text().replace("412 metres", "415 metres"))
    old_atoms = {a.text: a.id for a in kb.atoms(doc=str(f.resolve()))}
    rep = kb.ingest([str(f)])
    assert rep.added == [str(f.resolve())]
    texts = [a.text for a in kb.atoms(doc=str(f.resolve()))]
    assert "The Korrin Bridge is 415 metres long." in texts
    assert not any("412" in a.text for a in kb.atoms())
    assert _index_matches_store(kb)
    # only the changed sentence was compiled again; the others kept their atoms (ids, weights)
    assert rep.atoms == 1 and rep.reused == len(old_atoms) - 1 and rep.merged == 0
    now = {a.text: a.id for a in kb.atoms(doc=str(f.resolve()))}
    assert {t: i for t, i in now.items() if "415" not in t} == {t: i for t, i in old_atoms.items() if "412" not in t}


def test_edited_document_keeps_its_unchanged_atoms_with_new_spans(kb, sample_copy):
    f = sample_copy / "korrin_bridge.txt"
    path = str(f.resolve())
    old = {a.text: a for a in kb.atoms(doc=path)}
    ask = "Which engineer designed the Korrin Bridge?"
    answer = kb.ask(ask, mode="atoms").answer
    # a sentence added at the top: every kept atom's span moves; a removed sentence's atom goes
    text = f.read_text()
    gone = next(t for t in old if "412" in t)
    f.write_text(text.replace("The Korrin Bridge\n\n", "The Korrin Bridge\n\nThe bridge has four lanes.\n", 1)
                 .replace("The Korrin Bridge is 412 metres long.\n", ""))
    rep = kb.ingest([str(f)])
    new = {a.text: a for a in kb.atoms(doc=path)}
    assert gone not in new and rep.reused == len(old) - 1 and rep.atoms == len(new) - rep.reused
    doc = kb.store.document(path)
    moved = 0
    for t, a in new.items():
        if t in old:
            assert a.id == old[t].id
            moved += a.source.start != old[t].source.start
        if t in doc["text"]:  # the span points at the sentence where it now stands
            assert a.source.start == doc["text"].index(t)
    assert moved == len(old) - 1
    assert _index_matches_store(kb)
    assert kb.ask(ask, mode="atoms").answer == answer  # the kept atom answers as before
    assert not list(kb.store.shards.glob("*.tmp"))


def test_forget_removes_atoms_from_store_and_index(kb, sample_copy):
    path = str((sample_copy / "velmora.md").resolve())
    ids = {a.id for a in kb.atoms(doc=path)}
    res = kb.forget(path)
    assert res["atoms_removed"] == len(ids) > 0
    assert ids.isdisjoint({a.id for a in kb.atoms()})
    assert _index_matches_store(kb)
    routed = kb.route(["Who founded Velmora?"], top_k=8)[0]
    assert not {f"a{i}" for i in routed.ids} & ids
    with pytest.raises(errors.NotFoundError):
        kb.forget(path)


def test_ask_lists_the_answers_names_and_numbers_its_atoms_lack(kb, monkeypatch):
    import serving.generate as gen

    ans = kb.ask("Who designed the Korrin Bridge?", mode="atoms")
    atom = ans.atoms[0].text
    # the tiny test model's own answer is noise: put a known one in its place, one name changed
    wrong = atom.replace("Maud", "Maude")
    assert wrong != atom
    monkeypatch.setattr(gen, "generate", lambda *a, **k: [wrong])
    ans = kb.ask("Who designed the Korrin Bridge?", mode="atoms")
    assert ans.unsupported == ["Maude"], (atom, ans.unsupported)
    monkeypatch.setattr(gen, "generate", lambda *a, **k: [atom])
    assert kb.ask("Who designed the Korrin Bridge?", mode="atoms").unsupported == []
    assert kb.ask("What is the capital of Peru?", mode="atoms").unsupported == []  # refused: nothing to check


def test_a_looping_answer_is_answered_again_from_the_top_atom_then_cut(kb, monkeypatch):
    """Greedy decoding can loop ("General Brenn Brenn Brenn ..."), mostly with several atoms composed: the question is
    answered again from its top atom alone, which is then the one atom reported; a loop that remains is cut."""
    import serving.generate as gen

    q = "Who designed the Korrin Bridge?"
    ids = [a.id for a in kb.atoms()]
    monkeypatch.setattr(kb.router_config, "gate", False)  # both given atoms composed, whatever the router thinks
    first = kb.ask_many([q], mode="atoms", extra_atoms=[ids[:2]], routed=False)[0]
    assert len(first.atoms) == 2
    calls = []

    def fake(model, tok, questions, facts, pool, slots, weights, **kw):
        calls.append([len(s) for s in slots])
        return ["The engineer Maud Ellery designed it." if len(s) == 1 else "Maud Ellery Ellery Ellery Ellery Ellery"
                for s in slots]

    monkeypatch.setattr(gen, "generate", fake)
    ans = kb.ask_many([q], mode="atoms", extra_atoms=[ids[:2]], routed=False)[0]
    assert calls == [[2], [1]]
    assert ans.answer == "The engineer Maud Ellery designed it."
    assert [a.id for a in ans.atoms] == [first.atoms[0].id]

    calls.clear()
    monkeypatch.setattr(gen, "generate", lambda *a, **k: (calls.append(1), ["Maud Ellery Ellery Ellery Ellery"])[1])
    ans = kb.ask_many([q], mode="atoms", extra_atoms=[ids[:1]], routed=False)[0]
    assert calls == [1]  # one atom: nothing to drop, the loop is cut
    assert ans.answer == "Maud Ellery"


def test_repetition_start():
    from doc2atom.grounding import repetition_start

    text = "General Brenn Brenn Brenn Brenn Brenn"
    assert text[:repetition_start(text)].strip() == "General Brenn"
    text = "The Ossel flows north. The Ossel flows north. The Ossel flows north. The Ossel flows north."
    assert text[:repetition_start(text)].strip() == "The Ossel flows north."
    text = "Harrowgategategategategategategatega"  # a loop inside a word
    assert text[:repetition_start(text)] == "Harrowgate"
    for ok in ["Otto Brenn was captured and held for two years.", "It had 1, 2, 3, 4 boats.", "ha ha ha", "",
               "The Mississippi is long.", "It cost 100000000 marks."]:
        assert repetition_start(ok) is None


def test_ask_returns_the_documented_object(kb):
    ans = kb.ask("Who designed the Korrin Bridge?", mode="atoms")
    d = ans.model_dump()
    assert set(d) == {"answer", "refused", "atoms", "unsupported", "timings_ms"}
    assert not d["refused"] and d["atoms"]
    a = d["atoms"][0]
    assert set(a) == {"id", "type", "score", "weight", "text", "source", "sources", "signals"}
    assert set(a["signals"]) == {"dense", "lexical", "cover", "learned", "hop"}
    assert a["sources"][0] == a["source"]
    assert set(a["source"]) == {"doc", "path", "start", "end", "line"}
    assert a["source"]["path"].endswith("korrin_bridge.txt")


def test_out_of_scope_is_refused_in_every_knowledge_mode(kb):
    for mode in ("atoms", "context", "hybrid"):
        ans = kb.ask("What is the capital of Japan?", mode=mode)
        assert ans.refused and ans.answer == REFUSAL and ans.atoms == []
    assert not kb.ask("What is the capital of Japan?", mode="base").refused


def test_another_base_model_is_refused(kb, other_tiny_base):
    with pytest.raises(errors.BaseModelMismatch, match="re-ingest"):
        KnowledgeBase(kb.path, base_model=str(other_tiny_base), create=False)


def test_base_weights_untouched_and_batch_answers_match_single(kb):
    model, _ = kb.model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    qs = ["Who designed the Korrin Bridge?", "What is the capital of Japan?", "How long is the Korrin Bridge?"]
    batched = kb.ask_many(qs, mode="atoms", max_new_tokens=6)
    single = [kb.ask(q, mode="atoms", max_new_tokens=6) for q in qs]
    assert [a.answer for a in batched] == [a.answer for a in single]
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]), n


def test_bad_mode_and_empty_question(kb):
    with pytest.raises(errors.InputError, match="--mode"):
        kb.ask("x?", mode="magic")
    with pytest.raises(errors.InputError, match="empty"):
        kb.ask("   ")


def test_ingest_reports_bad_files_and_keeps_going(tmp_path, tiny_base):
    d = tmp_path / "docs"
    d.mkdir()
    (d / "good.txt").write_text("The Calder Dome seats nine thousand fans.")
    (d / "empty.txt").write_text("")
    (d / "latin1.txt").write_bytes("Caf\xe9 is open.".encode("latin-1"))
    k = KnowledgeBase(tmp_path / "kb", base_model=str(tiny_base), compile_config=fast_compile(), progress=False)
    rep = k.ingest([str(d)])
    assert len(rep.added) == 1 and len(rep.failed) == 2
    assert any("UTF-8" in m for _, m in rep.failed) and any("empty" in m for _, m in rep.failed)
    assert len(k.atoms()) == 1


def test_ingest_tells_the_compiler_the_whole_job_size(tmp_path, tiny_base, sample_copy, monkeypatch):
    """An ingest compiles in groups of documents; each call carries the job's atom count (cpu_fused="auto"
    weighs the one-time torch.compile against the whole job, not one group)."""
    import compiler.train as ctrain

    seen = []
    real = ctrain.compile_statements

    def spy(model, tok, texts, qs, cfg, progress=None, job_atoms=None):
        seen.append((len(texts), job_atoms))
        return real(model, tok, texts, qs, cfg, progress, job_atoms)

    monkeypatch.setattr(ctrain, "compile_statements", spy)
    k = KnowledgeBase(tmp_path / "kb", base_model=str(tiny_base), compile_config=fast_compile(), progress=False)
    rep = k.ingest([str(sample_copy)])
    assert len(seen) > 1  # several groups (batch_atoms 4)
    assert {j for _, j in seen} == {sum(n for n, _ in seen)} == {rep.atoms}


def test_later_runs_may_change_speed_settings_only(kb, tiny_base, capsys):
    """A knowledge base keeps the settings of its first ingest; a later run's explicitly given speed settings apply
    to that run (never stored), anything that would change what atoms become is refused with a warning."""
    from compiler.config import CompileConfig
    from serving.pipeline import _merge_settings

    stored = kb.store.settings()["compile"]
    k = KnowledgeBase(kb.path, base_model=str(tiny_base), create=False, progress=False,
                      compile_config=CompileConfig(batch_atoms=2, cpu_fused="off", rank=5, questions=2))
    assert k.compile_config.batch_atoms == 2 and k.compile_config.cpu_fused == "off"
    assert k.compile_config.rank == stored["rank"] != 5
    err = capsys.readouterr().err
    assert "other settings for rank;" in err  # questions=2 is what is stored: not a change
    assert k.store.settings()["compile"] == stored
    k2 = KnowledgeBase(kb.path, base_model=str(tiny_base), create=False, progress=False)
    assert k2.compile_config.model_dump() == stored
    assert capsys.readouterr().err == ""

    # with atoms summed in from the batch while training, the batch size changes the atoms: kept
    base = CompileConfig(compose_prob=0.5, batch_atoms=8)
    got = _merge_settings(base, CompileConfig(batch_atoms=2, max_tokens_per_step=512))
    assert got.batch_atoms == 8 and got.max_tokens_per_step == 512
    assert _merge_settings(base, None) is base
