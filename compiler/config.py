"""Compile settings, validated once where they are declared."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# Settings that change how fast atoms compile, not what they become (beyond float rounding): a knowledge base
# stores all settings at its first ingest, but a later run may change these (serving.pipeline.KnowledgeBase).
# compose_prob > 0 would make batch_atoms matter (the summed-in atoms come from the same batch); the pipeline
# keeps the stored batch sizes in that case.
SPEED_FIELDS = frozenset({"batch_atoms", "gpu_batch_atoms", "gpu_max_tokens_per_step", "max_tokens_per_step",
                          "sort_rows", "cpu_bf16", "cpu_fused", "cpu_compile_min_atoms"})


class CompileConfig(BaseModel):
    """How one atom becomes a micro-LoRA. Stored in the KB; all atoms of a KB share it."""

    model_config = ConfigDict(extra="forbid")

    modules: list[str] = Field(default=["down_proj"], description="Projection names that get a delta")
    layers: list[int] | None = Field(default=list(range(-10, 0)), description="Layer indices that get deltas; "
                                     "negative ones count from the top (-1 = the last layer); None = the upper half "
                                     "of the model. The frozen layers below the lowest one need no backward pass")
    rank: int = Field(default=3, ge=1, le=16, description="LoRA rank per atom")
    scale: float = Field(default=2.0, gt=0, le=64, description="Multiplier on B (alpha / r)")
    lr: float = Field(default=1e-2, gt=0, le=1.0, description="Adam learning rate")
    warm_lr_factor: float = Field(default=1.0, gt=0, le=100, description="lr multiplier for each atom's first "
                                  "warm_lr_steps steps (B starts at zero: the first steps only grow the delta)")
    warm_lr_steps: int = Field(default=0, ge=0, le=1000, description="How many first steps get warm_lr_factor")
    lr_b_ratio: float = Field(default=1.0, gt=0, le=256, description="LoRA+ style: B's learning rate is lr times "
                              "this (A's is lr). 1 = one learning rate for both")
    init_a: Literal["uniform", "data"] = Field(
        default="data", description="A's initial rows: uniform random (as nn.Linear), or (data) the top principal "
        "directions of the atom's own inputs to that module at its answer positions (one no-grad pass per atom)")
    init_b_std: float = Field(default=0.0, ge=0, le=1.0, description="Std of a normal initial B (0 = B starts at "
                              "zero, so an untrained atom changes nothing)")
    max_steps: int = Field(default=24, ge=1, le=1000, description="Most optimiser steps per atom")
    min_steps: int = Field(default=4, ge=0, le=1000, description="Fewest optimiser steps per atom")
    target_prob: float = Field(default=0.6, gt=0, lt=1, description="An atom is done when every answer token has p >= this")
    extra_steps: int = Field(default=2, ge=0, le=100, description="Steps after an atom first reaches target_prob")
    questions: int = Field(default=6, ge=1, le=64, description="Synthesised questions per atom")
    questions_per_step: int = Field(default=1, ge=1, le=64, description="Questions per atom in each step")
    stop_questions: int = Field(default=2, ge=0, le=64, description="0: an atom reaches the target when every answer "
                                "token of this step's questions has p >= target_prob. n > 0: each atom cycles through "
                                "its questions in a fixed shuffled order, and reaches the target when the latest "
                                "measurement of each of its n most recently seen questions is >= target_prob "
                                "(n = questions: every question seen above target; capped at the atom's number of questions)")
    batch_atoms: int = Field(default=16, ge=1, le=4096, description="Atoms trained together in one batched step")
    gpu_batch_atoms: int = Field(default=4096, ge=1, le=4096, description="batch_atoms on a GPU, where a step over "
                                 "4096 atoms costs little more than one over 16 and a chunk lasts as long as its "
                                 "slowest atom")
    gpu_max_tokens_per_step: int | None = Field(default=None, ge=64, le=1 << 20,
                                                description="max_tokens_per_step on a GPU; None = by its memory: "
                                                            "131072 from 64 GiB, 32768 from 16 GiB, else 8192")
    locality_weight: float = Field(default=0.0, ge=0, le=1000,
                                   description="Weight of KL(base || atom) on unrelated prompts (0 = off)")
    locality_prompts: int = Field(default=2, ge=1, le=64, description="Unrelated prompts per atom per step")
    locality_tokens: int = Field(default=8, ge=1, le=64, description="Base-continuation positions the KL covers")
    compose_prob: float = Field(default=0.0, ge=0, le=1,
                                description="Chance per step that other atoms (frozen) are summed in while training")
    compose_others: int = Field(default=3, ge=1, le=63, description="How many other atoms are summed in then")
    max_tokens_per_step: int = Field(default=1536, ge=64, le=1 << 20,
                                     description="Padded tokens per forward pass; bounds compile memory")
    sort_rows: bool = Field(default=True, description="Group each step's rows by length before splitting them into "
                            "forward passes (less padding; the same loss up to float rounding)")
    cpu_bf16: bool = Field(default=True, description="On a CPU with bf16 units (AVX512-BF16/AMX), multiply by the frozen base's weights in bf16 "
                           "(compiler.layers.Bf16Linears: activations, attention, norms, the atoms' weights, optimiser "
                           "state and losses stay fp32). No effect on a GPU")
    cpu_fused: Literal["auto", "off", "eager", "compile"] = Field(
        default="auto", description="On a CPU where cpu_bf16 acts, with a Llama-style SDPA base: the replayed upper "
        "layers as plain functions of bf16 weight copies (compiler.fused); 'compile' fuses them with torch.compile "
        "(inductor; needs a C++ compiler; a one-time compile per process, ~40 s on 2 cores with a cold inductor "
        "cache, ~7 s warm; falls back to 'eager' with a warning if it fails); 'eager' = the same functions "
        "uncompiled; 'off' = the HF layers; 'auto' = 'compile' when a C++ compiler is found and the job (an "
        "ingest's new atoms) has at least cpu_compile_min_atoms atoms or this process compiled already, else "
        "'off'. No effect on a GPU")
    cpu_compile_min_atoms: int = Field(default=192, ge=1, description="'auto' compiles the replayed layers for calls "
                                       "of at least this many atoms: measured on 2 cores, compiling saved ~0.2 s an "
                                       "atom against ~38 s of one-time compile with a cold cache")
    nullspace_energy: float = Field(default=0.0, ge=0, lt=1, description="Keep each atom's A orthogonal to the "
                                    "principal input directions (this share of energy) of generic prompts (0 = off)")
    objective: Literal["statement", "distill"] = Field(
        default="statement", description="What each synthesised question is taught: the atom's statement, or "
        "(distill) the base model's own answer with the atom's text in context where that answer uses the fact")
    seed: int = Field(default=0, description="Random seed (initialisation and question sampling)")

    def on(self, device) -> "CompileConfig":
        """The settings as they apply on `device` (a torch.device or its type): on a GPU, batch_atoms and
        max_tokens_per_step are replaced by their gpu_ values. The atoms are trained the same way either way."""
        if getattr(device, "type", device) != "cuda":
            return self
        tokens = self.gpu_max_tokens_per_step
        if tokens is None:
            import torch

            gib = torch.cuda.get_device_properties(torch.device(device)).total_memory / 2 ** 30
            tokens = 131072 if gib >= 64 else 32768 if gib >= 16 else 8192
        return self.model_copy(update={"batch_atoms": self.gpu_batch_atoms, "max_tokens_per_step": tokens})

    @model_validator(mode="after")
    def _check(self) -> "CompileConfig":
        bad = [m for m in self.modules if m not in PROJECTIONS]
        if bad or not self.modules:
            raise ValueError(f"modules must be a non-empty subset of {PROJECTIONS}, got {self.modules}")
        if self.min_steps > self.max_steps:
            raise ValueError(f"min_steps ({self.min_steps}) must be <= max_steps ({self.max_steps})")
        if self.questions_per_step > self.questions:
            raise ValueError(f"questions_per_step ({self.questions_per_step}) must be <= questions ({self.questions})")
        return self
