"""Compile recipes compared side by side: composition curve, leakage, answer quality, size, speed.

Two steps, so that the measuring step needs only torch + transformers (it also runs on a GPU
machine without spaCy, FAISS or the embedder):

  prepare  (CPU, spaCy): atomize the fictional sample corpus and the SQuAD 2.0 Rhine article,
           synthesise each atom's training questions exactly as ingest does, pick each
           answerable question's gold atom (an atom of its own paragraph/document that holds a
           gold answer), and write task files to bench/tasks/.
  run      for each task and recipe: compile every atom with the real base model (batched, as
           ingest does), then with routing bypassed so that only the atoms' weights are measured:
             - composition curve: each question with its gold atom plus k-1 random atoms of other
               documents, k in --ks, all weights 1; acc = a normalised gold answer is contained in
               the normalised output, f1 = SQuAD F1 of the raw output;
             - context reference: the same questions with the gold atom's text in the prompt
               (the `context` mode prompt), acc and f1;
             - leakage: held-out general questions (data/general_questions.json) with 1 and with
               8 random atoms composed; share of answers identical to the base model's;
             - bytes per atom (fp16), compile seconds per atom, atoms per second.
           Recipe "monolithic" trains one LoRA for the whole task instead (the baseline).
  throughput  atoms/s of the batched compile on N copies of a task's atoms, with the FLOPs spent
           (--phases: wall seconds per compile phase; --profile FILE: torch.profiler operator tables of the
           same compile, printed row not stored; --liger: an experiment with Liger-Kernel on the model).

    .venv/bin/python bench/bench_compile.py prepare
    flock /tmp/doc2atom-cpu.lock .venv/bin/python bench/bench_compile.py run --tasks sample --recipes default,kl
Results: bench/results/compile_recipes_<device>.json (the newest row per (task, recipe) is in "recipes"; a row it
replaces moves to "superseded"; each row records its git commit and machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
TASKS = ROOT / "bench" / "tasks"
RHINE = ROOT.parent / "shared" / "datasets" / "squad2_dev_rhine.json"

# The default before the fewer-rows work (o_proj + down_proj, rank 2, the upper half, 2 fresh random questions a
# step, uniform A): every recipe below that was defined against it keeps its meaning through _V2.
_V2 = {"modules": ["o_proj", "down_proj"], "layers": None, "rank": 2, "questions_per_step": 2, "stop_questions": 0,
       "init_a": "uniform"}

_OLD: dict[str, dict] = {
    "default_v2": {},
    # the default before the CPU throughput work: fp32 on the CPU, rows in atom order, 2 questions a step, 8 atoms
    "default_v1": {"sort_rows": False, "cpu_bf16": False, "questions_per_step": 2, "batch_atoms": 8},
    "v1_sorted_bf16": {"cpu_bf16": True, "questions_per_step": 2, "batch_atoms": 8},
    "default_extra1": {"extra_steps": 1, "questions_per_step": 1},  # measured while 1 question a step was default
    "qps1": {"questions_per_step": 1},
    "warm3x3": {"warm_lr_factor": 3.0, "warm_lr_steps": 3},
    "warm2x4": {"warm_lr_factor": 2.0, "warm_lr_steps": 4},
    "qps1_warm3x3": {"questions_per_step": 1, "warm_lr_factor": 3.0, "warm_lr_steps": 3},
    # fewer steps / rows per atom (issue 5, CPU throughput round 2)
    "lorap4": {"lr_b_ratio": 4.0},
    "lorap16": {"lr_b_ratio": 16.0},
    "datainit": {"init_a": "data"},
    "binit": {"init_b_std": 1e-3},
    "qps1_stop2": {"questions_per_step": 1, "stop_questions": 2},
    "qps1_stopall": {"questions_per_step": 1, "stop_questions": 6},
    "down10_r3": {"modules": ["down_proj"], "layers": list(range(20, 30)), "rank": 3},  # 126,720 B, 10 layers replayed
    "qps1_stop2_lorap4": {"questions_per_step": 1, "stop_questions": 2, "lr_b_ratio": 4.0},
    "qps1_stop2_data": {"questions_per_step": 1, "stop_questions": 2, "init_a": "data"},
    "qps1_stop2_data_lorap4": {"questions_per_step": 1, "stop_questions": 2, "init_a": "data", "lr_b_ratio": 4.0},
    "qps1_stop2_data_down15": {"questions_per_step": 1, "stop_questions": 2, "init_a": "data",
                               "modules": ["down_proj"]},
    "qps1_stop2_data_down10_r3": {"questions_per_step": 1, "stop_questions": 2, "init_a": "data",
                                  "modules": ["down_proj"], "layers": list(range(20, 30)), "rank": 3},
    "qps1_stop2_down10_r3": {"questions_per_step": 1, "stop_questions": 2, "modules": ["down_proj"],
                             "layers": list(range(20, 30)), "rank": 3},
    "qps1_stop2_data_down10_r3_x1": {"questions_per_step": 1, "stop_questions": 2, "init_a": "data",
                                     "modules": ["down_proj"], "layers": list(range(20, 30)), "rank": 3,
                                     "extra_steps": 1},
    "qps1_stop2_data_down10_r3_b32": {"questions_per_step": 1, "stop_questions": 2, "init_a": "data",
                                      "modules": ["down_proj"], "layers": list(range(20, 30)), "rank": 3,
                                      "batch_atoms": 32},
    "qps1_stop2_data_down10_r3_lr2e2": {"questions_per_step": 1, "stop_questions": 2, "init_a": "data",
                                        "modules": ["down_proj"], "layers": list(range(20, 30)), "rank": 3,
                                        "lr": 2e-2},
    "distill": {"objective": "distill"},
    "kl": {"locality_weight": 10.0, "locality_prompts": 2},
    "compose": {"compose_prob": 0.5, "compose_others": 3},
    "kl_compose": {"locality_weight": 10.0, "locality_prompts": 2, "compose_prob": 0.5, "compose_others": 3},
    "kl_compose7": {"locality_weight": 10.0, "locality_prompts": 2, "compose_prob": 0.5, "compose_others": 7},
    "top10": {"layers": list(range(20, 30))},
    "top10_kl_compose": {"layers": list(range(20, 30)), "locality_weight": 10.0, "compose_prob": 0.5,
                         "compose_others": 3},
    "down15": {"modules": ["down_proj"]},
    "down15_kl_compose": {"modules": ["down_proj"], "locality_weight": 10.0, "compose_prob": 0.5,
                          "compose_others": 3},
    "lowlr_kl_compose": {"lr": 3e-3, "max_steps": 48, "locality_weight": 10.0, "compose_prob": 0.5,
                         "compose_others": 3},
    "distill_kl_compose": {"objective": "distill", "locality_weight": 10.0, "locality_prompts": 2,
                           "compose_prob": 0.5, "compose_others": 3},
    "lowlr_kl30_p4_t16": {"lr": 3e-3, "max_steps": 48, "locality_weight": 30.0, "locality_prompts": 4,
                          "locality_tokens": 16, "compose_prob": 0.5, "compose_others": 3},
    "lowlr_kl100_p4_t16": {"lr": 3e-3, "max_steps": 48, "locality_weight": 100.0, "locality_prompts": 4,
                           "locality_tokens": 16, "compose_prob": 0.5, "compose_others": 3},
    "lowlr_down15_kl30_p4_t16": {"modules": ["down_proj"], "lr": 3e-3, "max_steps": 48, "locality_weight": 30.0,
                                 "locality_prompts": 4, "locality_tokens": 16, "compose_prob": 0.5,
                                 "compose_others": 3},
    "lowlr_top10_kl30_p4_t16": {"layers": list(range(20, 30)), "lr": 3e-3, "max_steps": 48,
                                "locality_weight": 30.0, "locality_prompts": 4, "locality_tokens": 16,
                                "compose_prob": 0.5, "compose_others": 3},
    "lr1e3_kl30_p4_t16": {"lr": 1e-3, "max_steps": 96, "locality_weight": 30.0, "locality_prompts": 4,
                          "locality_tokens": 16, "compose_prob": 0.5, "compose_others": 3},
    "rank1_lowlr_kl30_p4_t16": {"rank": 1, "lr": 3e-3, "max_steps": 48, "locality_weight": 30.0,
                                "locality_prompts": 4, "locality_tokens": 16, "compose_prob": 0.5,
                                "compose_others": 3},
    "ns90": {"nullspace_energy": 0.9},
    "ns99": {"nullspace_energy": 0.99},
    "ns999": {"nullspace_energy": 0.999},
    "ns99_kl_compose": {"nullspace_energy": 0.99, "locality_weight": 10.0, "compose_prob": 0.5, "compose_others": 3},
    "ns999_kl_compose": {"nullspace_energy": 0.999, "locality_weight": 10.0, "compose_prob": 0.5,
                         "compose_others": 3},
    "monolithic": {},
}

RECIPES: dict[str, dict] = {"default": {}, **{k: {**_V2, **v} for k, v in _OLD.items()}}
# variants of the current default (fields on top of CompileConfig's defaults): more questions a step, which
# trades rows per step (the CPU's cost) for steps per atom (the GPU's cost)
RECIPES.update({"default_qps2": {"questions_per_step": 2}, "default_qps4": {"questions_per_step": 4},
                "default_t05": {"target_prob": 0.5},
                # chunks of 1024 / one chunk for the whole 4096-atom throughput run on a GPU (rows before stop 13
                # ran the GPU throughput with 1024 a chunk; gpu_batch_atoms now defaults to 4096)
                "default_b1024": {"gpu_batch_atoms": 1024, "gpu_max_tokens_per_step": 1 << 17},
                "default_b4096": {"gpu_batch_atoms": 4096, "gpu_max_tokens_per_step": 1 << 17},
                # fewer layers to run backward through, same or fewer bytes (6 x r5 = 10 x r3 = 126,720 B)
                "default_top6_r5": {"layers": [-6, -5, -4, -3, -2, -1], "rank": 5},
                "default_top8_r3": {"layers": [-8, -7, -6, -5, -4, -3, -2, -1], "rank": 3},
                # CPU (compiler/fused.py): the replayed layers as plain functions, eager or torch.compile'd, or the
                # HF layers ("auto", the default, compiles for calls of >= cpu_compile_min_atoms atoms only)
                "default_fused": {"cpu_fused": "eager"},
                "default_tc": {"cpu_fused": "compile"},
                "default_off": {"cpu_fused": "off"},
                "default_tc_b32": {"cpu_fused": "compile", "batch_atoms": 32},
                "default_s1": {"seed": 1}, "default_tc_s1": {"cpu_fused": "compile", "seed": 1},
                # the same pair on two more seeds (stop 16: is the compiled path's rhine60 gap at seed 0 real?)
                "default_off_s2": {"cpu_fused": "off", "seed": 2}, "default_tc_s2": {"cpu_fused": "compile", "seed": 2},
                "default_off_s3": {"cpu_fused": "off", "seed": 3}, "default_tc_s3": {"cpu_fused": "compile", "seed": 3},
                "warm3x3_s1": {"warm_lr_factor": 3.0, "warm_lr_steps": 3, "seed": 1}})

# bf16 dense peak of the GPUs this bench ran on, TFLOP/s (vendor figure, no sparsity), for the FLOP-limit estimate
PEAK_TFLOPS = {"NVIDIA H200": 989.0, "NVIDIA H100 80GB HBM3": 989.0}


# ---------------------------------------------------------------------------------------- prepare

def _norm(s: str) -> str:
    from serving.evaluate.scoring import normalize

    return normalize(s)


def _task_from_docs(name: str, docs, questions: list[dict], nlp, cfg) -> dict:
    """questions: {"question", "answers", "doc" (document id), "kind"}; gold = first atom of its doc holding an answer."""
    from compiler.synth import questions as synth
    from doc2atom.atomizer import atomize_many

    atoms = []
    for doc, drafts in zip(docs, atomize_many(docs, nlp)):
        for d in drafts:
            atoms.append({"doc": doc.id, "type": d.type, "text": d.text, "questions": synth(d.text, nlp, cfg.questions)})
    evals, missing = [], 0
    for q in questions:
        gold = next((i for i, a in enumerate(atoms) if a["doc"] == q["doc"]
                     and any(_norm(g) and _norm(g) in _norm(a["text"]) for g in q["answers"])), None)
        if gold is None:
            missing += 1
            continue
        evals.append(dict(q, gold=gold))
    general = json.loads((ROOT / "data" / "general_questions.json").read_text())["questions"]
    return {"task": name, "atoms": atoms, "eval": evals, "eval_without_gold_atom": missing, "general": general}


def prepare(args) -> None:
    from compiler.config import CompileConfig
    from doc2atom.models import load_spacy
    from doc2atom.readers import read_file
    from serving.evaluate.datasets import read_squad

    nlp, cfg = load_spacy(), CompileConfig()
    TASKS.mkdir(parents=True, exist_ok=True)
    docs = [d for p in sorted((ROOT / "data" / "sample").iterdir()) for d in read_file(p)]
    by_name = {Path(d.path.split("#")[0]).name: d.id for d in docs}
    qs = [{"question": q["question"], "answers": q["answers"], "doc": by_name[q["docs"][0]], "kind": q["kind"]}
          for q in json.loads((ROOT / "data" / "sample_questions.json").read_text())["questions"]
          if q["kind"] in ("direct", "paraphrase")]
    task = _task_from_docs("sample", docs, qs, nlp, cfg)
    task["source"] = "data/sample (fictional, written for doc2atom)"
    (TASKS / "sample.json").write_text(json.dumps(task, indent=1) + "\n")
    print(f"sample: {len(task['atoms'])} atoms, {len(task['eval'])} questions", file=sys.stderr)
    if Path(args.rhine).exists():
        ev = read_squad(args.rhine)
        rdocs = ev.documents
        qs = [{"question": q.question, "answers": q.answers, "doc": q.docs[0], "kind": "squad"}
              for q in ev.questions if q.answers]
        task = _task_from_docs("rhine", rdocs, qs, nlp, cfg)
        task["source"] = ("SQuAD 2.0 dev, article 'Rhine' (Wikipedia), answerable questions; CC BY-SA 4.0 "
                          "(Rajpurkar et al., 2018)")
        (TASKS / "rhine.json").write_text(json.dumps(task, indent=1) + "\n")
        print(f"rhine: {len(task['atoms'])} atoms, {len(task['eval'])} questions "
              f"({task['eval_without_gold_atom']} without a gold atom)", file=sys.stderr)


# -------------------------------------------------------------------------------------------- run

def _versions() -> dict:
    import torch
    import transformers

    v = {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}
    try:
        import triton

        v["triton"] = triton.__version__
    except ImportError:
        pass
    return v


def _machine(device: str) -> dict:
    import torch

    return {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": device, "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
            "loadavg_start": os.getloadavg()}


def _git() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                              text=True).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


class Bench:
    def __init__(self, device: str, batch: int):
        import torch

        from doc2atom.models import load_base, resolve_base

        self.device = device
        self.batch = batch
        self.model, self.tok = load_base(str(resolve_base().path), device)
        self.model.eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        torch.manual_seed(0)

    def answers(self, questions: list[str], weights: list[dict] | None = None, sets: list[list[int]] | None = None,
                facts: list[list[str]] | None = None, max_new_tokens: int = 40) -> list[str]:
        from serving.generate import build_pool, generate

        out = []
        for s in range(0, len(questions), self.batch):
            qs = questions[s:s + self.batch]
            pool = slots = None
            if sets is not None:
                part = sets[s:s + self.batch]
                uniq = list(dict.fromkeys(a for st in part for a in st))
                slot = {a: i for i, a in enumerate(uniq)}
                pool = build_pool([weights[a] for a in uniq])
                slots = [[slot[a] for a in st] for st in part]
            out += generate(self.model, self.tok, qs, facts[s:s + self.batch] if facts else None, pool, slots,
                            max_new_tokens=max_new_tokens)
        return out


def _score(outs: list[str], evals: list[dict]) -> dict:
    from serving.evaluate.scoring import contains, f1

    n = max(len(evals), 1)
    return {"acc": round(sum(contains(o, q["answers"]) for o, q in zip(outs, evals)) / n, 4),
            "f1": round(sum(f1(o, q["answers"]) for o, q in zip(outs, evals)) / n, 4)}


def compile_task(b: Bench, task: dict, fields: dict, recipe: str):
    from compiler.config import CompileConfig
    from compiler.train import compile_statements, make_examples

    texts = [a["text"] for a in task["atoms"]]
    qs = [a["questions"] for a in task["atoms"]]
    cfg = CompileConfig(**fields)
    _sync(b.device)
    t0 = time.perf_counter()
    if recipe == "monolithic":
        from compiler.monolithic import train_monolithic

        mono = train_monolithic(b.model, b.tok, make_examples(b.tok, texts, qs), cfg,
                                log=lambda m: print(m, file=sys.stderr, flush=True))
        _sync(b.device)
        return [mono.weights] * len(texts), [mono.stats], time.perf_counter() - t0
    compiled = compile_statements(b.model, b.tok, texts, qs, cfg)
    _sync(b.device)
    return [c.weights for c in compiled], [c.stats for c in compiled], time.perf_counter() - t0


def run_recipe(b: Bench, task: dict, recipe: str, ks: list[int], seed: int, limit: int | None) -> dict:
    fields = dict(RECIPES[recipe])
    if b.device.startswith("cuda"):  # quality rows: smaller chunks than the product's GPU default
        fields.setdefault("gpu_batch_atoms", 256)
        fields.setdefault("gpu_max_tokens_per_step", 1 << 16)
    evals = task["eval"][:limit] if limit else task["eval"]
    weights, stats, secs = compile_task(b, task, fields, recipe)
    n_atoms = len(task["atoms"])
    rng = random.Random(seed)
    doc_of = [a["doc"] for a in task["atoms"]]
    qtexts = [q["question"] for q in evals]
    row: dict = {"task": task["task"], "recipe": recipe, "fields": fields, "atoms": n_atoms, "questions": len(evals),
                 "compile_s": round(secs, 2), "compile_s_per_atom": round(secs / n_atoms, 4),
                 "atoms_per_s": round(n_atoms / secs, 2)}
    if recipe != "monolithic":
        row["bytes_per_atom_fp16"] = 2 * sum(A.numel() + B.numel() for A, B in weights[0].values())
        row["mean_steps"] = round(sum(s["steps"] for s in stats) / len(stats), 2)
        row["converged"] = round(sum(s["converged"] for s in stats) / len(stats), 3)
        if "distilled_questions" in stats[0]:
            row["distilled_share"] = round(sum(s["distilled_questions"] for s in stats)
                                           / sum(len(a["questions"]) for a in task["atoms"]), 3)
    else:
        row["monolithic"] = stats[0]
        row["bytes_total_fp16"] = 2 * sum(A.numel() + B.numel() for A, B in weights[0].values())
    curve = {}
    for k in (ks if recipe != "monolithic" else [1]):
        sets = []
        for q in evals:
            others = [i for i in range(n_atoms) if doc_of[i] != doc_of[q["gold"]]]
            sets.append([q["gold"]] + rng.sample(others, min(k - 1, len(others))))
        outs = b.answers(qtexts, weights, sets)
        curve[str(k)] = _score(outs, evals)
        if k == 1:
            row["examples_k1"] = [{"q": q, "out": o} for q, o in zip(qtexts[:5], outs[:5])]
    row["composition"] = curve
    if "1" in curve and max(ks) > 1 and str(max(ks)) in curve and curve["1"]["acc"]:
        row[f"k{max(ks)}_over_k1_acc"] = round(curve[str(max(ks))]["acc"] / curve["1"]["acc"], 3)
    ctx = _score(b.answers(qtexts, facts=[[task["atoms"][q["gold"]]["text"]] for q in evals]), evals)
    row["context_gold"] = ctx
    if ctx["f1"]:
        row["f1_atoms_over_context"] = round(curve["1"]["f1"] / ctx["f1"], 3)
    general = task["general"]
    base = b.answers(general, max_new_tokens=24)
    leak = {}
    for n in (1, 8):
        sets = [rng.sample(range(n_atoms), min(n, n_atoms)) for _ in general]
        outs = b.answers(general, weights, sets, max_new_tokens=24)
        leak[str(n)] = round(sum(o == x for o, x in zip(outs, base)) / len(general), 4)
    row["general_unchanged"] = leak
    return row


def throughput(b: Bench, task: dict, recipe: str, n: int, phases: bool = False, profile: str | None = None) -> dict:
    """atoms/s compiling n atoms (copies of the task's atoms) in one batched compile, and the FLOPs it spent.

    phases: also record the wall seconds of each compile phase (compiler.train.PHASE_TIMES; the device is
    synchronised at each phase boundary, which the loop's one sync a step already nearly does)."""
    from compiler import train as ctrain
    from compiler.lora import first_layer, target_names

    fields = dict(RECIPES[recipe])  # on a GPU: the product's defaults (gpu_batch_atoms, gpu_max_tokens_per_step)
    reps = (n + len(task["atoms"]) - 1) // len(task["atoms"])
    big = {"atoms": (task["atoms"] * reps)[:n]}
    graphs = _dynamo_graphs()
    t_warm = time.perf_counter()
    compile_task(b, {"atoms": big["atoms"][:min(n, 64)]}, fields, recipe)  # warm-up (kernels, allocator)
    t_warm = time.perf_counter() - t_warm
    graphs_warm = _dynamo_graphs()
    ctrain.PHASE_TIMES = {} if phases else None
    try:
        if profile:
            weights, stats, secs = _profiled(profile, lambda: compile_task(b, big, fields, recipe), b.device)
        else:
            weights, stats, secs = compile_task(b, big, fields, recipe)
        phase_s = dict(ctrain.PHASE_TIMES or {})
    finally:
        ctrain.PHASE_TIMES = None
    # FLOPs: frozen weights need no weight gradient, so a token costs 2P forward + 2P input-gradient in the
    # layers with atoms, 2P (forward only, once) below them, and the LM head 4*V*d per answer token.
    from compiler.config import CompileConfig

    cfg = CompileConfig(**fields)
    m = b.model
    names = target_names(m, cfg.modules, cfg.layers)
    L = first_layer(names)
    per_layer = sum(p.numel() for p in m.model.layers[0].parameters())
    n_layers = m.config.num_hidden_layers
    V, d = m.lm_head.weight.shape
    prompt_len = sum(len(b.tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True))
                     for a in big["atoms"][:32] for q in a["questions"][:1]) / min(32, len(big["atoms"]))
    ans_len = sum(len(b.tok(a["text"])["input_ids"]) + 1 for a in big["atoms"][:32]) / min(32, len(big["atoms"]))
    seq = prompt_len + ans_len
    steps = sum(s["steps"] for s in stats)
    rows_per_step = cfg.questions_per_step
    upper = 4 * per_layer * (n_layers - L) * seq + 4 * V * d * ans_len
    flops = steps * rows_per_step * upper + len(stats) * cfg.questions * 2 * per_layer * L * seq
    if cfg.init_a == "data":  # one forward of the layers with atoms over every question
        flops += len(stats) * cfg.questions * 2 * per_layer * (n_layers - L) * seq
    row = {"task": task["task"], "recipe": recipe, "fields": fields, "atoms": n, "seconds": round(secs, 2),
           "atoms_per_s": round(n / secs, 2), "mean_steps": round(steps / len(stats), 2),
           "est_tflop": round(flops / 1e12, 2), "est_tflop_per_s": round(flops / 1e12 / secs, 2),
           "note": "FLOPs estimated from mean sequence lengths of the first 32 atoms; attention FLOPs ignored"}
    peak = PEAK_TFLOPS.get(_machine(b.device)["gpu"] or "")
    if peak:  # the rate if every estimated FLOP ran at the bf16 dense peak
        row["peak_tflop_per_s"] = peak
        row["flop_limit_atoms_per_s"] = round(n / (flops / 1e12 / peak), 1)
        row["mfu"] = round(flops / 1e12 / secs / peak, 4)
    if phases:
        row["phases_s"] = {k: round(v, 3) for k, v in sorted(phase_s.items(), key=lambda kv: -kv[1])}
    # the warm-up call (min(n, 64) atoms) pays any one-time cost, torch.compile's included; torch.compile graphs
    # made in the warm-up and in the timed call (a graph in the timed call is a recompile it paid for)
    row["warmup_s"] = round(t_warm, 2)
    row["dynamo_graphs_warmup"] = graphs_warm - graphs
    row["dynamo_graphs_timed"] = _dynamo_graphs() - graphs_warm
    return row


def _dynamo_graphs() -> int:
    """torch.compile graphs made so far in this process (0 if dynamo was never used)."""
    if "torch._dynamo" not in sys.modules:
        return 0
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _profiled(path: str, fn, device: str):
    """fn() under torch.profiler; writes operator tables (by device time and by host time) and the sum of device
    kernel time against the wall time to `path`. The profiler slows the host side: a profiled row's atoms/s is
    not comparable with an unprofiled one."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    with profile(activities=acts) as prof:
        out = fn()
    ka = prof.key_averages()
    dev_attr = "self_device_time_total" if hasattr(ka[0], "self_device_time_total") else "self_cuda_time_total"
    dev_us = sum(getattr(e, dev_attr, 0) for e in ka)
    lines = [f"wall {out[2]:.2f} s; device kernel time (sum of self times) {dev_us / 1e6:.2f} s",
             "", "## by self device time", ka.table(sort_by=dev_attr, row_limit=45) if dev_us else "(no device)",
             "", "## by self host time", ka.table(sort_by="self_cpu_time_total", row_limit=45)]
    Path(path).write_text("\n".join(lines) + "\n")
    return out


def run(args) -> None:
    import torch

    from doc2atom.models import resolve_device

    device = resolve_device(args.device)
    b = Bench(device, args.batch or (64 if device.startswith("cuda") else 8))
    if getattr(args, "liger", False):  # experiment: Liger's fused RMSNorm / RoPE / SwiGLU kernels on the model
        from liger_kernel.transformers import apply_liger_kernel_to_llama

        apply_liger_kernel_to_llama(rope=True, rms_norm=True, swiglu=True, cross_entropy=False,
                                    fused_linear_cross_entropy=False, model=b.model)
    out_path = Path(args.out or ROOT / "bench" / "results" / f"compile_recipes_{'gpu' if device != 'cpu' else 'cpu'}.json")
    result = json.loads(out_path.read_text()) if out_path.exists() else {}
    result.update({"benchmark": "compile_recipes", "git": _git(), "machine": _machine(device),
                   "versions": _versions(), "seed": args.seed, "ks": args.ks})
    rows = {(r["task"], r["recipe"]): r for r in result.get("recipes", [])}
    tp = {(r["task"], r["recipe"], r["atoms"]): r for r in result.get("throughput", [])}
    superseded = result.setdefault("superseded", [])  # rows replaced by a newer run of the same key, kept
    ks = [int(k) for k in args.ks.split(",")]

    def keep_old(old: dict | None, key: str) -> None:
        if old is not None:
            superseded.append(dict(old, superseded_kind=key, git=old.get("git", result.get("git"))))

    def save():
        result["recipes"] = list(rows.values())
        result["throughput"] = list(tp.values())
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1) + "\n")

    for tname in args.tasks.split(","):
        task = json.loads((TASKS / f"{tname}.json").read_text())
        if args.limit_atoms:
            keep = set(range(args.limit_atoms))
            task["eval"] = [q for q in task["eval"] if q["gold"] in keep]
            task["atoms"] = task["atoms"][:args.limit_atoms]
            tname = task["task"] = f"{tname}{args.limit_atoms}"  # e.g. rhine60: its own rows
        for recipe in (args.recipes.split(",") if args.recipes else []):
            t = time.perf_counter()
            row = run_recipe(b, task, recipe, ks, args.seed, args.limit)
            row["wall_s"] = round(time.perf_counter() - t, 1)
            row["git"] = result["git"]
            row["machine"] = result["machine"]
            keep_old(rows.get((tname, recipe)), "recipes")
            rows[(tname, recipe)] = row
            print(json.dumps({k: v for k, v in row.items() if k != "examples_k1"}), flush=True)
            save()
        for n in ([int(x) for x in args.throughput.split(",")] if args.throughput else []):
            for recipe in (args.throughput_recipes or "default").split(","):
                r = throughput(b, task, recipe, n, args.phases, args.profile)
                r["git"] = result["git"]
                r["machine"] = result["machine"]
                if args.profile:  # the profiler slows the host: printed, not stored as a throughput figure
                    print(json.dumps(dict(r, profiled=args.profile)), flush=True)
                    continue
                keep_old(tp.get((tname, recipe, n)), "throughput")
                tp[(tname, recipe, n)] = r
                print(json.dumps(r), flush=True)
                save()


def init_bench(args) -> None:
    """Seconds of the data init's subspace iteration (compiler.train._top_directions) on a chunk-sized batch, with
    Gram-Schmidt (the default) and with torch.linalg.qr (the plain path), per target module; printed as JSON."""
    import torch

    from compiler.train import _top_directions
    from doc2atom.models import resolve_device

    device = resolve_device(args.device)
    g = torch.Generator(device=device).manual_seed(0)
    out = {"device": device, "gpu": _machine(device)["gpu"], "git": _git(), "M": args.atoms, "n": args.rows,
           "d": args.d_in, "r": args.rank}
    X = torch.randn(args.atoms, args.rows, args.d_in, generator=g, device=device)
    for method in ("gs", "qr"):
        _top_directions(X, args.rank, method=method)  # warm-up
        _sync(device)
        t = time.perf_counter()
        for _ in range(args.repeat):
            _top_directions(X, args.rank, method=method)
        _sync(device)
        out[f"{method}_s_per_module"] = round((time.perf_counter() - t) / args.repeat, 5)
    print(json.dumps(out), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("prepare", help="write bench/tasks/*.json (needs spaCy)")
    p.add_argument("--rhine", default=str(RHINE))
    r = sub.add_parser("run", help="compile and measure recipes")
    r.add_argument("--tasks", default="sample")
    r.add_argument("--recipes", default="default")
    r.add_argument("--ks", default="1,2,4,8")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--device", default="auto")
    r.add_argument("--batch", type=int, default=0, help="questions per generation batch")
    r.add_argument("--limit", type=int, default=None, help="first N eval questions")
    r.add_argument("--limit-atoms", type=int, default=None)
    r.add_argument("--throughput", default="", help="comma list of atom counts for the throughput measurement")
    r.add_argument("--throughput-recipes", default="default")
    r.add_argument("--phases", action="store_true", help="throughput rows also record wall seconds per compile phase")
    r.add_argument("--profile", default=None, help="write torch.profiler tables of the throughput compile to this file "
                   "(its row's timing is then not a throughput figure)")
    r.add_argument("--liger", action="store_true", help="experiment: Liger kernels on the model (needs liger-kernel)")
    r.add_argument("--out", default=None)
    i = sub.add_parser("init-bench", help="time the data init's subspace iteration, Gram-Schmidt vs QR")
    i.add_argument("--device", default="auto")
    i.add_argument("--atoms", type=int, default=1024)
    i.add_argument("--rows", type=int, default=96, help="answer-predicting rows per atom (6 questions x 16 tokens)")
    i.add_argument("--d-in", type=int, default=1536, help="down_proj's input width in SmolLM2-135M")
    i.add_argument("--rank", type=int, default=3)
    i.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    {"prepare": prepare, "run": run, "init-bench": init_bench}[args.cmd](args)


if __name__ == "__main__":
    main()
