"""Multi-hop routing: a second retrieval round conditioned on the first round's best atom.

"Who founded the town where the thessaloop was invented?" first finds "The thessaloop was
invented by the musician Oren Pask in Velmora."; the question's words that atom does not
cover ("founded", "town") are the residual, and the names the atom adds ("Oren", "Pask",
"Velmora") are the bridge. The second round searches with the question plus the bridge
words; an atom it finds is composed too when it contains a bridge word AND a residual word
AND its learned score clears the refusal threshold. A question the first atom covers
completely has no residual and gets no second round, so single-hop questions keep one atom.
This module must never write to the store or the indices.
"""

from __future__ import annotations

import numpy as np

from router.lexical import _WORD, normalize, stopwords, tokenize

MAX_BRIDGE_WORDS = 4


def bridge_words(atom_text: str, question_tokens: set[str], lexical) -> tuple[list[str], list[str]]:
    """(raw words, stemmed tokens) the atom adds to the question: its names and numbers, else its rarest words."""
    words = _WORD.findall(normalize(atom_text))
    stems = tokenize(words) if words else []
    named, rare = [], []
    for i, (w, st) in enumerate(zip(words, stems)):
        if not st or st[0] in question_tokens or w.lower() in stopwords():
            continue
        if any(c.isdigit() for c in w) or (i > 0 and w[:1].isupper()):
            named.append((w, st[0]))
        else:
            rare.append((w, st[0]))
    if not named and rare:
        idf = lexical.idf([s for _, s in rare])
        rare = [rare[j] for j in np.argsort(-idf, kind="stable")[:2]]
    pick = list(dict.fromkeys(named or rare))[:MAX_BRIDGE_WORDS]
    return [w for w, _ in pick], list(dict.fromkeys(s for _, s in pick))


def second_round(router, questions: list[str], routes) -> None:
    """Append at most `max_hop_atoms` second-round atoms to each routed question's Route, in place."""
    from router.select import AtomScore

    todo = []  # (question index, text of the second query, residual tokens, bridge tokens)
    firsts = [r.ids[0] for r in routes if not r.refused and r.ids]
    texts = router.texts(firsts) if firsts else {}
    for q, r in enumerate(routes):
        if r.refused or not r.ids or r.ids[0] not in texts:
            continue
        qtok = set(tokenize([questions[q]])[0])
        atok = set(tokenize([texts[r.ids[0]]])[0])
        residual = sorted(qtok - atok)
        raw, bridge = bridge_words(texts[r.ids[0]], qtok, router.lexical)
        if residual and bridge:
            todo.append((q, f"{questions[q]} {' '.join(raw)}", residual, bridge))
    if not todo:
        return
    qv = router.embedder([t for _, t, _, _ in todo])
    cands = router.candidates(qv, [t for _, t, _, _ in todo], exclude=[set(routes[q].ids) for q, _, _, _ in todo],
                              name_texts=[questions[q] for q, _, _, _ in todo])
    thr = router.threshold
    for (q, _, residual, bridge), c in zip(todo, cands):
        if not len(c.ids):
            continue
        # the question's names that this atom lacks are the first atom's to supply: not a swapped name
        p = router.score_names_covered(c)
        has_bridge = (router.lexical.term_scores(bridge, c.ids) > 0).any(axis=0)
        has_resid = (router.lexical.term_scores(residual, c.ids) > 0).any(axis=0)
        ok = has_bridge & has_resid & (p >= thr)
        r = routes[q]
        for j in [j for j in np.argsort(-p, kind="stable") if ok[j]][:router.config.max_hop_atoms]:
            w = round(min(1.0, float(p[j]) / max(r.best, 1e-9)), 4)
            r.ids.append(int(c.ids[j]))
            r.scores.append(float(p[j]))
            r.weights.append(w)
            r.details.append(AtomScore(id=int(c.ids[j]), dense=round(float(c.dense[j]), 4),
                                       lexical=round(float(c.bm25[j]), 4), cover=round(float(c.cover[j]), 4),
                                       learned=round(float(p[j]), 4), weight=w, hop=2))
