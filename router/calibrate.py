"""Fit the learned router and calibrate the refusal threshold on a knowledge base's own questions.

Positives: the questions compilation synthesised for each atom (stored in its stats), each
scored against the atom's leave-one-out key (key + mean of its *other* questions), because
the stored key already contains the question and would make it look easier than a user's.
Negatives: router/oos.py's general questions, and near misses made from the positives by
swapping a name for an invented one ("Who founded Velmora?" -> "Who founded Dravenholt?"),
which no atom answers although every other word matches.

Three-fold cross-fitting by atom: each fold's questions are scored by a model fitted on the
other two, and the threshold is the score that routes `target_routed` of these held-out
in-scope questions; the saved model is then fitted on all of them. The held-out figures
(routed share, refusals, recall@1 on synthesised questions) go into router.json.
The uncalibrated router (prior weights, DEFAULT_THRESHOLD) is scored on the same held-out
questions, and replaces the fit when it does clearly better: with a handful of atoms the fit
can saturate (every question at p = 1, nothing refused) or set the threshold above every
user paraphrase (ROUTER_NOTES "Small knowledge bases").
This module reads the store and never writes it.
"""

from __future__ import annotations

import json
import re

import numpy as np

from router import nearmiss
from router.learned import DEFAULT_WEIGHTS, LearnedRouter, features
from router.oos import OUT_OF_SCOPE

FOLDS = 3
_NAME = re.compile(r"(?<!^)(?<![.?!] )\b[A-Z][a-z][\w-]*(?:\s+[A-Z][a-z][\w-]*)*")
_SYLL = ("dra", "ven", "holt", "quil", "lam", "osk", "tre", "mor", "vin", "ska", "bel", "thor", "nix", "pal",
         "ru", "zen", "cor", "dal", "fen", "gro", "hal", "ist", "jor", "kel")


def _invented(rng, known) -> str:
    for _ in range(50):
        w = "".join(rng.choice(_SYLL, size=rng.integers(2, 4))).capitalize()
        if not known([w.lower()])[0]:
            return w
    return "Zzyqvarn"


def near_misses(questions: list[str], rng, known) -> list[str]:
    """Each question that names something, with one name swapped for an invented one (others dropped)."""
    out = []
    for q in questions:
        spans = list(_NAME.finditer(q))
        if not spans:
            continue
        m = spans[rng.integers(len(spans))]
        fake = " ".join(_invented(rng, known) for _ in m.group(0).split())
        out.append(q[:m.start()] + fake + q[m.end():])
    return out


def paraphrase_like(question: str, rng, drop: float = 0.5) -> str | None:
    """The question with about `drop` of its ordinary content words removed (names, numbers and question
    words kept), or None when nothing was removed: a cheap stand-in for a user's paraphrase, which shares
    the meaning but fewer words with the atom than a synthesised question does."""
    from router.lexical import stopwords

    words = question.rstrip("?").split()
    keep, removed = [], 0
    for i, w in enumerate(words):
        bare = w.strip(",;:.").lower()
        ordinary = bare.isalpha() and bare not in stopwords() and not (i > 0 and w[:1].isupper())
        if ordinary and rng.random() < drop:
            removed += 1
            continue
        keep.append(w)
    return " ".join(keep) + "?" if removed and len(keep) >= 2 else None


_OOS_CACHE: dict = {}


def _oos_vectors(emb) -> np.ndarray:
    """OUT_OF_SCOPE embedded once per embedder (every calibration of a process reuses them)."""
    if _OOS_CACHE.get("embedder") is not emb:
        _OOS_CACHE.update(embedder=emb, vectors=emb(list(OUT_OF_SCOPE)))
    return _OOS_CACHE["vectors"]


def _loo(key: np.ndarray, qv: np.ndarray) -> np.ndarray:
    """(n, d) unit leave-one-out keys: key + mean of the other questions (the key alone when n == 1)."""
    n = len(qv)
    if n == 1:
        return (key / np.linalg.norm(key))[None]
    v = key[None] + (qv.sum(0)[None] - qv) / (n - 1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def auc(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """P(score of a positive > score of a negative), ties half (Mann-Whitney U over average ranks)."""
    if not len(pos) or not len(neg):
        return None
    allv = np.concatenate([np.asarray(pos, float), np.asarray(neg, float)])
    _, inv, cnt = np.unique(allv, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(cnt) - (cnt - 1) / 2.0)[inv]  # the average 1-based rank of each value's run of ties
    return round(float((ranks[:len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg))), 4)


# the defaults replace a calibration whose held-out balanced accuracy they beat by more than this
KEEP_MARGIN = 0.05


def _best_per_question(p: np.ndarray, y: np.ndarray, g: np.ndarray) -> tuple[dict, dict]:
    """Per question (g: each candidate row's question, rows grouped), its best candidate's score and whether
    that candidate is the question's atom."""
    top, ok = {}, {}
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    for lo, hi in zip(starts, np.r_[starts[1:], len(g)]):
        j = lo + int(np.argmax(p[lo:hi]))
        top[int(g[lo])], ok[int(g[lo])] = float(p[j]), bool(y[j] > 0)
    return top, ok


def _balanced(scores: np.ndarray, kinds: np.ndarray, thr: float) -> float:
    """Mean of the share of held-out in-scope questions routed and of out-of-scope questions and near misses
    refused, at threshold thr (scores: each question's best score)."""
    pos = scores[kinds == "pos"]
    neg = scores[(kinds == "oos") | (kinds == "near")]
    parts = [float((pos >= thr).mean())] if len(pos) else []
    parts += [float((neg < thr).mean())] if len(neg) else []
    return sum(parts) / len(parts) if parts else 0.0


def calibrate(router, seed: int = 0, max_atoms: int = 400, prior=DEFAULT_WEIGHTS, l2: float = 0.005,
              per_atom_edits: int = 3, nlp=None, keep_margin: float = KEEP_MARGIN) -> dict | None:
    """Fit on up to max_atoms atoms' questions; returns the new router state, or None when too few atoms.

    prior, l2: the weights the fit is pulled towards, and how hard (see LearnedRouter.fit).
    keep_margin: the prior weights and DEFAULT_THRESHOLD replace the fit when their held-out balanced accuracy
    (in-scope routed, out-of-scope and near misses refused) is higher by more than this (inf: always the fit).
    per_atom_edits: near misses edited from each atom's questions (router/nearmiss.py; 0 = none);
    nlp: the spaCy pipeline for their entity labels (default: the embedded en_core_web_sm)."""
    from router.router import MIN_CALIBRATION_ATOMS

    rng = np.random.default_rng(seed)
    store, emb, cfg = router.store, router.embedder, router.config
    all_ids = store.rowids()
    pick = np.sort(rng.choice(all_ids, size=min(len(all_ids), 2 * max_atoms), replace=False)) if len(all_ids) else all_ids
    atoms = []
    text_of = {}
    for rid, key, text, stats in store.rows("key, text, stats", pick):
        qs = [q for q in (json.loads(stats).get("questions") or []) if isinstance(q, str) and q.strip()]
        if qs:
            atoms.append((rid, key, qs))
            text_of[rid] = text
    if len(atoms) < MIN_CALIBRATION_ATOMS:
        return None
    atoms = [atoms[i] for i in rng.permutation(len(atoms))[:max_atoms]]
    keys = emb([k for _, k, _ in atoms])
    qtexts = [q for _, _, qs in atoms for q in qs]
    qv = emb(qtexts)
    # positives: one row group per synthesised question, its atom scored with the leave-one-out key
    pos_q, pos_target, pos_fold, override, loo_vec = [], [], [], [], []
    at = 0
    for a, (rid, _, qs) in enumerate(atoms):
        loo = _loo(keys[a], qv[at:at + len(qs)])
        for j in range(len(qs)):
            loo_vec.append(loo[j])
            pos_q.append(at + j)
            pos_target.append(rid)
            pos_fold.append(a % FOLDS)
            override.append({rid: float(loo[j] @ qv[at + j])})
        at += len(qs)
    # paraphrase-like variants of each question, scored against the same leave-one-out key
    aug = [(k, paraphrase_like(qtexts[pos_q[k]], rng)) for k in range(len(pos_q))]
    aug = [(k, t) for k, t in aug if t]
    av = emb([t for _, t in aug]) if aug else np.zeros((0, qv.shape[1]), np.float32)
    for n, (k, t) in enumerate(aug):
        rid = pos_target[k]
        pos_q.append(len(qtexts) + n)
        pos_target.append(rid)
        pos_fold.append(pos_fold[k])
        override.append({rid: float(av[n] @ loo_vec[k])})
    qtexts = qtexts + [t for _, t in aug]
    qv = np.concatenate([qv, av])
    known = router.lexical.known if router.lexical is not None else router._ensure_lexical().known
    near = near_misses([atoms[a][2][0] for a in range(len(atoms))], rng, known)
    # near misses edited from each atom's questions with words of other atoms (router/nearmiss.py); each is
    # held out with its atom's fold, so the fold's model never saw an edit of that atom
    edited = nearmiss.generate([(text_of[rid], qs) for rid, _, qs in atoms], rng, per_atom=per_atom_edits,
                               nlp=nlp) if per_atom_edits else []
    neg_texts = list(OUT_OF_SCOPE) + near + [q for _, _, q in edited]
    nv = np.concatenate([_oos_vectors(emb), emb(neg_texts[len(OUT_OF_SCOPE):]) if len(neg_texts) > len(OUT_OF_SCOPE)
                         else np.zeros((0, qv.shape[1]), np.float32)])
    texts = qtexts + neg_texts
    vecs = np.concatenate([qv, nv])
    overrides = override + [{} for _ in neg_texts]
    cands = router.candidates(vecs, texts, dense_override=overrides)
    targets = pos_target + [-1] * len(neg_texts)
    folds = pos_fold + [i % FOLDS for i in range(len(OUT_OF_SCOPE) + len(near))] + [a % FOLDS for a, _, _ in edited]
    n_orig = len(pos_target) - len(aug)  # augmented variants train the model but never place the threshold
    kinds = (["pos"] * n_orig + ["aug"] * len(aug) + ["oos"] * len(OUT_OF_SCOPE) + ["near"] * len(near)
             + [f"edit_{k}" for _, k, _ in edited])
    F, y, g, train = [], [], [], []
    for qi, c in enumerate(cands):
        if not len(c.ids):
            continue
        F.append(features(c, cfg.rrf_k))
        y.append((c.ids == targets[qi]).astype(np.float64))
        g.append(np.full(len(c.ids), qi))
        # retrieval missed the atom: nothing for the reranker to learn, but the question still counts as routed
        # (to a wrong atom) or refused when the threshold is placed
        missed = targets[qi] >= 0 and targets[qi] not in set(c.ids.tolist())
        # edits no feature can tell from a paraphrase are measured, not learned from (nearmiss.REPORT_ONLY)
        train.append(np.full(len(c.ids), not missed and kinds[qi][5:] not in nearmiss.REPORT_ONLY))
    F, y, g, train = np.concatenate(F), np.concatenate(y), np.concatenate(g), np.concatenate(train)
    fold_of_row = np.asarray(folds)[g]
    held_p = np.zeros(len(y), np.float32)
    for f in range(FOLDS):
        tr = (fold_of_row != f) & train
        m = LearnedRouter.fit(F[tr], y[tr], g[tr], prior=prior, l2=l2)
        held_p[fold_of_row == f] = m.prob(F[fold_of_row == f])
    final = LearnedRouter.fit(F[train], y[train], g[train], prior=prior, l2=l2)
    top_p, top_ok = _best_per_question(held_p, y, g)
    # a question with no candidate at all (empty KB side) is refused
    pos_scores = np.array([top_p.get(qi, 0.0) for qi in range(n_orig)])
    thr = float(np.quantile(pos_scores, 1.0 - cfg.target_routed, method="lower")) if len(pos_scores) else 0.5
    kinds_a = np.array(kinds)
    scores_all = np.array([top_p.get(qi, 0.0) for qi in range(len(texts))])
    missed = sum(1 for qi in range(n_orig) if not top_ok.get(qi, False) and qi in top_p)

    def share(kind, refused):
        s = scores_all[kinds_a == kind]
        return round(float(((s < thr) if refused else (s >= thr)).mean()), 4) if len(s) else None

    # The uncalibrated router (the prior weights, DEFAULT_THRESHOLD) on the same held-out questions. With few
    # atoms the fit can saturate (every question, in scope or not, at p = 1: nothing refused) or put the
    # threshold above users' paraphrases; the calibration is kept unless the defaults do clearly better.
    from router.router import DEFAULT_THRESHOLD

    def_top, def_ok = _best_per_question(LearnedRouter(prior).prob(F), y, g)
    def_all = np.array([def_top.get(qi, 0.0) for qi in range(len(texts))])
    chosen = "calibrated"
    bal_cal, bal_def = _balanced(scores_all, kinds_a, thr), _balanced(def_all, kinds_a, DEFAULT_THRESHOLD)
    if bal_def > bal_cal + keep_margin:
        chosen, final, thr, scores_all, top_ok = "default", LearnedRouter(prior), DEFAULT_THRESHOLD, def_all, def_ok
        missed = sum(1 for qi in range(n_orig) if not top_ok.get(qi, False) and qi in top_p)

    metrics = {
        "chosen": chosen, "heldout_balanced_calibrated": round(bal_cal, 4),
        "heldout_balanced_default": round(bal_def, 4),
        "atoms": len(atoms), "questions": n_orig, "paraphrase_like": len(aug), "oos": len(OUT_OF_SCOPE),
        "near_misses": len(near), "heldout_routed": share("pos", False),
        "heldout_recall@1": round(float(np.mean([top_ok.get(qi, False) for qi in range(n_orig)])), 4),
        "heldout_wrong_or_missed_top": missed,
        "heldout_paraphrase_like_routed": share("aug", False),
        "oos_refused": share("oos", True), "near_refused": share("near", True),
        "edited_near_misses": len(edited),
        "edited_refused": round(float((scores_all[np.char.startswith(kinds_a, "edit_")] < thr).mean()), 4)
        if edited else None,
        "edited_refused_by_kind": {k[5:]: share(k, True) for k in sorted(set(kinds)) if k.startswith("edit_")},
        "heldout_auc_pos_vs_edited": auc(scores_all[kinds_a == "pos"], scores_all[np.char.startswith(kinds_a, "edit_")])
        if edited else None,
    }
    return {"format": "doc2atom-router/1", "weights": final.as_dict(), "threshold": round(thr, 6),
            "target_routed": cfg.target_routed, "calibrated_atoms": int(router.dense.ntotal), "seed": seed,
            "metrics": metrics}
