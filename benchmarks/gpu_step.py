"""GPU path check: one DeGRPO step per backend (Unsloth vs transformers+bitsandbytes), VRAM and speed.

What it does
------------
For each model shape and backend it

1. builds a Qwen2 checkpoint with *random* weights from the real architecture's numbers
   (Qwen2.5-1.5B / Qwen2.5-7B ``Qwen2Config`` written below; no hub access is needed) plus a synthetic
   byte-level ``Qwen2Tokenizer`` of the real length (151,665 tokens), saved in bf16 to a temporary
   folder, exactly as a hub checkpoint would be on disk;
2. loads it through the package (``thinkless_lite.model.load_model``) in 4-bit NF4 with LoRA r=16 on all
   linear layers (q, k, v, o, gate, up, down), the settings of ``configs/r1_distill_1.5b_t4.yaml``
   (gradient checkpointing on, beta, temperature, learning rate, gradient accumulation);
3. runs ``--steps`` real training steps of the package's ``DeGRPOTrainer`` (TRL 1.15 ``GRPOTrainer``,
   ``trainer.train()``), configured by the package's own ``thinkless_lite.rl.grpo_config``, with a fake
   reward that gives varied rewards in every group (so no group is dropped) and forced lengths: prompts
   of exactly ``--prompt-len`` tokens (256), completions of exactly ``--completion-len`` tokens (1024:
   ``generation_kwargs={"min_new_tokens": N}`` with ``max_completion_length=N``, so EOS is suppressed
   until the end), ``--generations`` (8) completions per prompt.

So the measured step IS the real one: TRL's generation (``model.generate``), reward, reference/old
log-probs, DeGRPO's per-token (B, T) advantages, loss, backward and the optimizer step. Timings are taken
by wrapping the trainer instance's ``_generate_single_turn`` (generation) and
``_generate_and_score_completions`` (the whole rollout: generation + reward + log-probs for KL) and by a
callback around each optimizer step, with ``torch.cuda.synchronize()`` at every boundary;
"update" = step - rollout. The first step (compilation, autotuning, allocator warm-up) is reported
but left out of the medians when more than one step runs.

Each (shape, backend) runs in its own Python process: importing Unsloth patches transformers and TRL
globally, so running hf after it in one process would not measure hf; a separate process also gives
each backend its own peak-memory counters. A worker that runs out of memory or fails is reported with
its error; an unavailable backend (Unsloth without CUDA, or not installed) is reported as skipped with
the reason; neither stops the other runs.

Backends: ``hf`` (transformers + bitsandbytes NF4 + PEFT), ``unsloth`` (Unsloth's FastLanguageModel,
imported after ``thinkless_lite.trainer`` and so after TRL, as a library user importing the stage
modules first would, so Unsloth's rewritten GRPOTrainer is NOT DeGRPOTrainer's base), ``unsloth-first`` (Unsloth
imported before TRL/transformers, as Unsloth asks and the ``thinkless-lite`` CLI does, so its rewritten GRPOTrainer and GRPO loss ARE the
base of DeGRPOTrainer). Each result says whether an Unsloth trainer class is in DeGRPOTrainer's MRO.

Outputs (per run): peak GPU memory (``torch.cuda.max_memory_allocated`` and ``max_memory_reserved``;
on CPU the process's peak RSS instead), seconds for loading, generation, rollout, update and the whole
step, and tokens per second (generated tokens / generation seconds; prompt+completion tokens of the
batch / update seconds). ``--out`` gets JSON, and a Markdown table (device name, versions, settings,
results, targets) goes next to it (``--md`` to choose the path). GB here is 10^9 bytes.

``--verify-loss``: no generation; one fixed batch (``--generations`` sequences of prompt + completion,
completions of varied lengths), the same checkpoint and the same LoRA weights (every LoRA / trainable
token parameter set from a seed derived from its name, B != 0, so every LoRA gradient is non-zero) under
each backend. For each it reports the trainer's DeGRPO loss (``trainer.compute_loss`` on the batch with
(B, T) advantages ``A_b * loss_token_weights``) against the closed form (at ratio 1 the clipped
surrogate's value is ``-sum(A_bt * mask) / N``, independent of the model) and against what the loss
would be had the (B, T) advantages been collapsed to (B,) ones, and the LoRA gradients. The parent then
compares each backend's gradients with hf's (max abs, max rel, relative L2, cosine) and, for hf, the
trainer's loss and gradients with ``thinkless_lite.losses.degrpo_loss`` on plain-forward log-probs.
This is the check that Unsloth's replaced GRPO loss still receives the (B, T) per-token advantages.
beta is 0 there (no KL term) and alpha is ``--verify-alpha`` (0.5: a heavy control-token column makes
a wrong advantage layout obvious in both loss and gradients). On CPU only hf runs; unsloth is reported
skipped.

Targets (reported as PASS / MISS, never hidden): peak reserved GPU memory per step <= 10 GB for the
1.5B shape and <= 22 GB for the 7B shape (each backend); unsloth >= 1.5x faster per step than hf
(hf step seconds / unsloth step seconds, medians, per shape). On CPU the targets are "n/a".

How to run
----------
CPU smoke run (what the tests do; tiny Qwen2 shape, hf only, unsloth reported skipped)::

    python benchmarks/gpu_step.py --tiny --device cpu --backends hf,unsloth --steps 1 \
        --prompt-len 16 --completion-len 8 --generations 4 --out runs/gpu_step/smoke.json

On a CUDA GPU (the 7B target assumes a 24 GB card; about 20 GB of disk for the temporary checkpoints)::

    python benchmarks/gpu_step.py --shapes 1.5b,7b --backends unsloth,unsloth-first,hf --steps 3 \
        --out runs/gpu_step/bench.json
    python benchmarks/gpu_step.py --verify-loss --shapes 1.5b --out runs/gpu_step/verify.json

Expected versions (python 3.12, linux x86_64; ``requirements/cpu.txt`` and pyproject pin the same):
torch >=2.4,<2.15 with CUDA (2.11.0+cu130 on the workplace's H100/H200 image), transformers 5.17.0,
trl 1.15.0, peft 0.21.2, bitsandbytes 0.50.2, accelerate 1.15.0, datasets 4.8.5, unsloth 2026.10.9,
unsloth_zoo 2026.10.9 (and their needs: see below). The JSON and Markdown record what was installed.

Carrying wheels to an offline GPU box (on a machine with internet, from the repo root; .whl/ is
git-ignored)::

    P="--no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
       --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64"
    pip download $P -d .whl/dl bitsandbytes==0.50.2 unsloth==2026.10.9 unsloth_zoo==2026.10.9 \
        trl==1.15.0 peft==0.21.2 datasets==4.8.5 dill==0.4.1 multiprocess==0.70.19 fsspec==2026.2.0 \
        cut_cross_entropy==25.1.1

and on the GPU box (no index, no dependency resolution; the image's torch and transformers stay)::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/dl/*.whl
    export PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1
    python3 benchmarks/gpu_step.py --shapes 1.5b,7b --backends unsloth,unsloth-first,hf --out runs/gpu_step/bench.json

xformers is deliberately not carried (its wheel pins one exact torch build; Unsloth falls back to
PyTorch attention without it), nor torchao, tyro, diffusers, hf_transfer or Unsloth's studio/CLI
needs (not imported when training). docs/gpu.md also shows how to trim the set to ~40 MB for a
carry limit of 64 MiB, and the known issue this benchmark exposes (generation without KV cache under
gradient checkpointing in train mode, ``--eval-mode-generation``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from a checkout without `pip install -e .`
    sys.path.insert(0, str(REPO))

DEFAULT_CONFIG = REPO / "configs" / "r1_distill_1.5b_t4.yaml"

# Qwen2.5-1.5B and Qwen2.5-7B (config.json of the hub checkpoints); the tiny shape is for CPU smoke runs.
_QWEN2_COMMON = dict(hidden_act="silu", rms_norm_eps=1e-6, initializer_range=0.02, use_sliding_window=False,
                     attention_dropout=0.0, rope_theta=1_000_000.0, max_position_embeddings=32768)
SHAPES: dict[str, dict] = {
    "1.5b": dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                 num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, **_QWEN2_COMMON),
    "7b": dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
               num_key_value_heads=4, vocab_size=151936, tie_word_embeddings=False, **_QWEN2_COMMON),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=512, tie_word_embeddings=True, **_QWEN2_COMMON),
}
# The Qwen2.5 tokenizer holds 151,665 tokens (the embedding matrix is padded to 151,936).
TOKENIZER_LEN = {"1.5b": 151665, "7b": 151665, "tiny": None}

BACKENDS = ("unsloth", "unsloth-first", "hf")
UNSLOTH_BACKENDS = ("unsloth", "unsloth-first")
TARGET_PEAK_GB = {"1.5b": 10.0, "7b": 22.0}
TARGET_SPEEDUP = 1.5
EXPECTED_VERSIONS = {
    "python": "3.12", "torch": ">=2.4,<2.15 (CUDA build)", "transformers": "5.17.0", "trl": "1.15.0",
    "peft": "0.21.2", "bitsandbytes": "0.50.2", "accelerate": "1.15.0", "datasets": "4.8.5",
    "unsloth": "2026.10.9", "unsloth_zoo": "2026.10.9",
}
# Rewards by position in the generation batch: every group of >= 2 has varied rewards (none dropped).
REWARD_PATTERN = [1.0, 0.5, -1.0, 0.5, 1.0, -1.0, 0.5, -1.0]
GB = 1e9
NOT_MEASURED = "Not measured yet: no GPU was available in the session that built this script."


# ============================================================================ shared helpers

def installed_versions() -> dict[str, str | None]:
    """Installed distributions, read from metadata (nothing is imported)."""
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("torch", "transformers", "trl", "peft", "bitsandbytes", "accelerate", "datasets", "unsloth",
                 "unsloth_zoo", "xformers", "triton"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _split(value: str | None) -> list[str]:
    return [v.strip() for v in (value or "").split(",") if v.strip()]


def canonical_name(name: str) -> str:
    """A parameter name without PEFT's wrapper prefixes, so both backends' names match."""
    while name.startswith("base_model.model."):
        name = name[len("base_model.model."):]
    return name


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


# ============================================================================ checkpoint

def build_tokenizer(total_len: int | None):
    """A byte-level ``Qwen2Tokenizer`` without merges (one token per byte) padded to ``total_len`` tokens.

    The filler entries ("Ġ" + capital letters, i.e. " AB") are never produced by encoding lower-case
    prompts, so a prompt of N lower-case letters and spaces is exactly N tokens; decoding any id works.
    ``<think>``/``</think>`` exist (as in R1-Distill); ``<short>`` is left for the package to add.
    """
    import itertools
    import string

    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    from thinkless_lite.mini_base import MINI_CHAT_TEMPLATE, byte_alphabet

    base = ["<|endoftext|>"] + byte_alphabet()
    added = ["<|im_start|>", "<|im_end|>", "<think>", "</think>"]
    n_fillers = max(0, (total_len or 0) - len(base) - len(added))
    fillers = []
    for width in range(2, 6):
        for combo in itertools.product(string.ascii_uppercase, repeat=width):
            if len(fillers) == n_fillers:
                break
            fillers.append("Ġ" + "".join(combo))
    vocab = {tok: i for i, tok in enumerate(base + fillers)}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>", clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in added[2:]])
    tokenizer.chat_template = MINI_CHAT_TEMPLATE
    return tokenizer


def build_checkpoint(shape: str, folder: Path) -> dict:
    """Random-weight Qwen2 of ``shape`` + tokenizer, saved like a hub checkpoint (bf16; fp32 for tiny)."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    began = time.perf_counter()
    tokenizer = build_tokenizer(TOKENIZER_LEN[shape])
    dtype = torch.float32 if shape == "tiny" else torch.bfloat16
    config = Qwen2Config(**SHAPES[shape], bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    n_params = _count_params(SHAPES[shape])
    device = "cpu"
    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        if free > 1.3 * n_params * 2:  # bf16 weights plus slack: initialise on the GPU (seconds, not minutes)
            device = "cuda"
    previous = torch.get_default_dtype()
    torch.manual_seed(0)
    try:
        torch.set_default_dtype(dtype)
        with torch.device(device):
            model = Qwen2ForCausalLM(config)
    finally:
        torch.set_default_dtype(previous)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    n_params = sum(p.numel() for p in model.parameters())
    tmp = folder.with_name(folder.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, max_shard_size="4GB")
    tokenizer.save_pretrained(tmp)
    del model
    shutil.rmtree(folder, ignore_errors=True)
    tmp.rename(folder)
    return {"shape": shape, "parameters": n_params, "built_on": device, "dtype": str(dtype).replace("torch.", ""),
            "tokenizer_len": len(tokenizer), "seconds": round(time.perf_counter() - began, 2),
            "bytes_on_disk": sum(p.stat().st_size for p in folder.iterdir())}


def _count_params(s: dict) -> int:
    h, i, n, v = s["hidden_size"], s["intermediate_size"], s["num_hidden_layers"], s["vocab_size"]
    kv = h // s["num_attention_heads"] * s["num_key_value_heads"]
    per_layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * i + 2 * h
    return v * h * (1 if s["tie_word_embeddings"] else 2) + n * per_layer + h


# ============================================================================ worker (one process per run)

def _import_for_backend(backend: str) -> tuple[bool, str]:
    """Import Unsloth / TRL in the order the backend stands for; returns (usable, why)."""
    if backend == "unsloth-first":
        from thinkless_lite.model import unsloth_status  # torch and the config only: no transformers yet

        ok, why = unsloth_status()  # imports unsloth before transformers/trl, as Unsloth asks
        import thinkless_lite.trainer  # noqa: F401
        return ok, why
    import thinkless_lite.trainer  # noqa: F401  (TRL first: what `thinkless-lite rl` does)
    if backend == "unsloth":
        from thinkless_lite.model import unsloth_status

        return unsloth_status()
    return True, "transformers + bitsandbytes + PEFT"


def _trainer_lineage() -> tuple[list[str], bool]:
    from thinkless_lite.trainer import DeGRPOTrainer

    names = [f"{c.__module__}.{c.__qualname__}" for c in DeGRPOTrainer.__mro__[:6]]
    return names, any("unsloth" in n.lower() for n in names)


def _run_config(spec: dict):
    """The recipe of ``spec['config']`` with this benchmark's model, batch and lengths."""
    import dataclasses

    from thinkless_lite.config import load_config

    cfg = load_config(spec["config"])
    p, c = spec["prompt_len"], spec["completion_len"]
    model = dataclasses.replace(
        cfg.model, name_or_path=spec["checkpoint"], backend="unsloth" if spec["backend"] in UNSLOTH_BACKENDS else "hf",
        load_in_4bit=True, lora_r=16, adapter_path=None,
        max_seq_length=max(cfg.model.max_seq_length, p + c + 8),
        gradient_checkpointing=cfg.model.gradient_checkpointing if spec.get("gradient_checkpointing") is None
        else spec["gradient_checkpointing"])
    overrides = {"generation_kwargs": {"min_new_tokens": c}, "save_strategy": "no", "logging_steps": 1,
                 "shuffle_dataset": False, "disable_tqdm": True}
    rl = dataclasses.replace(
        cfg.rl, num_generations=spec["generations"], prompts_per_step=spec["prompts"], max_completion_length=c,
        gradient_accumulation_steps=spec["grad_accum"], max_steps=spec["steps"], save_steps=10**6,
        report_to=[], trainer_overrides={**cfg.rl.trainer_overrides, **overrides})
    if spec["task"] == "verify":
        rl = dataclasses.replace(rl, beta=0.0, gradient_accumulation_steps=1, alpha=spec["verify_alpha"],
                                 decoupled=True)
    return dataclasses.replace(cfg, model=model, rl=rl, output_dir=spec["work_dir"], name="run", seed=spec["seed"])


def make_prompts(tokenizer, n: int, length: int, seed: int) -> list[str]:
    """``n`` prompts of exactly ``length`` tokens (lower-case letters and spaces: one token per byte)."""
    import random

    rng = random.Random(seed)
    prompts = []
    for _ in range(n):
        chars = [" " if i % 6 == 5 else rng.choice("abcdefghijklmnopqrstuvwxyz") for i in range(length)]
        text = "".join(chars)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != length:
            raise RuntimeError(f"synthetic prompt encodes to {len(ids)} tokens, expected {length}")
        prompts.append(text)
    return prompts


def varied_reward(completions, **kwargs) -> list[float]:
    """Fake reward: varied within every group, so DeGRPO drops nothing and every sequence has a gradient."""
    return [REWARD_PATTERN[i % len(REWARD_PATTERN)] for i in range(len(completions))]


class _Clock:
    """Synchronised wall-clock spans; GPU peaks per step; CPU peak RSS."""

    def __init__(self, cuda: bool):
        import torch

        self.torch, self.cuda = torch, cuda

    def sync(self) -> None:
        if self.cuda:
            self.torch.cuda.synchronize()

    def now(self) -> float:
        self.sync()
        return time.perf_counter()

    def reset_peak(self) -> None:
        if self.cuda:
            self.torch.cuda.reset_peak_memory_stats()

    def peaks(self) -> dict:
        import resource

        out = {"peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GB, 3)}
        if self.cuda:
            out["peak_allocated_gb"] = round(self.torch.cuda.max_memory_allocated() / GB, 3)
            out["peak_reserved_gb"] = round(self.torch.cuda.max_memory_reserved() / GB, 3)
        return out


def _device_info(cuda: bool) -> dict:
    import torch

    info = {"cuda": cuda, "torch": torch.__version__, "torch_cuda": torch.version.cuda}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(name=torch.cuda.get_device_name(0), total_memory_gb=round(props.total_memory / GB, 2),
                    capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                    bf16=torch.cuda.is_bf16_supported())
    else:
        info.update(name=f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"{torch.get_num_threads()} torch threads)")
    return info


def _load(spec: dict, cfg, clock: _Clock, record: dict):
    from thinkless_lite.model import load_model

    clock.reset_peak()
    began = clock.now()
    loaded = load_model(cfg.model, trainable=True, seed=cfg.seed)
    record["load_s"] = round(clock.now() - began, 3)
    record["load_memory"] = clock.peaks()
    record["backend_chosen"] = {"name": loaded.backend.name, "reason": loaded.backend.reason}
    params = list(loaded.model.parameters())
    record["trainable_parameters"] = sum(p.numel() for p in params if p.requires_grad)
    record["gradient_checkpointing"] = bool(getattr(loaded.model, "is_gradient_checkpointing", False))
    return loaded


def worker_bench(spec: dict, record: dict) -> None:
    import torch
    from datasets import Dataset
    from transformers import TrainerCallback, set_seed

    from thinkless_lite.rl import grpo_config
    from thinkless_lite.trainer import DeGRPOTrainer

    cuda = torch.cuda.is_available()
    clock = _Clock(cuda)
    cfg = _run_config(spec)
    set_seed(spec["seed"])
    loaded = _load(spec, cfg, clock, record)
    n_prompts = spec["prompts"] * (spec["steps"] + 1)
    prompts = make_prompts(loaded.tokenizer, n_prompts, spec["prompt_len"], spec["seed"])
    dataset = Dataset.from_list([{"prompt": p} for p in prompts])
    args = grpo_config(cfg, Path(spec["work_dir"]) / "trainer")
    trainer = DeGRPOTrainer(model=loaded.model, reward_funcs=[varied_reward], args=args, train_dataset=dataset,
                            processing_class=loaded.tokenizer, alpha=cfg.rl.alpha, decoupled=cfg.rl.decoupled,
                            drop_uniform_groups=cfg.rl.drop_uniform_groups)
    record["grpo"] = {"per_device_train_batch_size": args.per_device_train_batch_size,
                      "gradient_accumulation_steps": args.gradient_accumulation_steps,
                      "steps_per_generation": args.steps_per_generation,
                      "generation_batch_size": args.generation_batch_size, "beta": args.beta,
                      "loss_type": args.loss_type, "bf16": args.bf16, "fp16": args.fp16,
                      "temperature": args.temperature, "learning_rate": args.learning_rate}

    current: dict = {}
    steps: list[dict] = []

    generate = trainer._generate_single_turn
    rollout = trainer._generate_and_score_completions

    def timed_generate(*a, **k):
        model = trainer.model
        was_training = model.training
        # transformers turns the KV cache off in train mode under gradient checkpointing, and generate() then
        # feeds one token at a time without its context: recorded, and avoided with --eval-mode-generation.
        current["generation_in_train_mode_with_checkpointing"] = bool(
            was_training and getattr(model, "is_gradient_checkpointing", False) and not spec["eval_mode_generation"])
        if spec["eval_mode_generation"]:
            model.eval()
        began = clock.now()
        try:
            out = generate(*a, **k)
        finally:
            if spec["eval_mode_generation"] and was_training:
                model.train()
        current["generate_s"] = current.get("generate_s", 0.0) + clock.now() - began
        lengths = [len(ids) for ids in out[0]]
        current["generated_tokens"] = current.get("generated_tokens", 0) + sum(lengths)
        current["completion_len_min"] = min(lengths + [current.get("completion_len_min", 10**9)])
        current["completion_len_max"] = max(lengths + [current.get("completion_len_max", 0)])
        current["sequences"] = current.get("sequences", 0) + len(lengths)
        return out

    def timed_rollout(*a, **k):
        began = clock.now()
        out = rollout(*a, **k)
        current["rollout_s"] = current.get("rollout_s", 0.0) + clock.now() - began
        current["prompt_tokens"] = current.get("prompt_tokens", 0) + int(out["prompt_mask"].sum().item())
        current["completion_tokens"] = current.get("completion_tokens", 0) + int(out["completion_mask"].sum().item())
        current["advantages_shape"] = list(out["advantages"].shape)
        return out

    trainer._generate_single_turn = timed_generate
    trainer._generate_and_score_completions = timed_rollout

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            current.clear()
            clock.reset_peak()
            current["_began"] = clock.now()

        def on_step_end(self, args, state, control, **kwargs):
            step_s = clock.now() - current.pop("_began")
            row = {"step": state.global_step, "step_s": round(step_s, 4), **clock.peaks()}
            for key, value in current.items():
                row[key] = round(value, 4) if isinstance(value, float) else value
            if "rollout_s" in current:
                row["update_s"] = round(step_s - current["rollout_s"], 4)
            steps.append(row)
            print(f"[gpu_step] {spec['shape']}/{spec['backend']} step {state.global_step}: {row}", flush=True)

    trainer.add_callback(StepClock())
    trainer.train()
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]

    measured = steps[spec["warmup_steps"]:] if len(steps) > spec["warmup_steps"] else steps
    tokens_per_step = spec["prompts"] * spec["generations"] * (spec["prompt_len"] + spec["completion_len"])
    summary = {k: _median([row.get(k) for row in measured]) for k in ("step_s", "rollout_s", "generate_s", "update_s")}
    gen = _median([row.get("generated_tokens") for row in measured])
    summary["generation_tokens_per_s"] = gen / summary["generate_s"] if gen and summary["generate_s"] else None
    summary["update_tokens_per_s"] = tokens_per_step / summary["update_s"] if summary["update_s"] else None
    summary["step_completion_tokens_per_s"] = gen / summary["step_s"] if gen and summary["step_s"] else None
    summary = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summary.items()}
    peak_keys = ("peak_allocated_gb", "peak_reserved_gb", "peak_rss_gb")
    record.update(
        status="ok", steps=steps, measured_steps=[row["step"] for row in measured], summary=summary, losses=losses,
        tokens_per_step=tokens_per_step,
        peak={k: max([row.get(k) or 0 for row in steps] + [record["load_memory"].get(k) or 0]) for k in peak_keys
              if any(k in row for row in steps)},
        generation_in_train_mode_with_checkpointing=any(row.get("generation_in_train_mode_with_checkpointing")
                                                        for row in steps),
        adapter_dtypes=sorted({str(p.dtype).replace("torch.", "")
                               for p in loaded.model.parameters() if p.requires_grad}),
        forced_lengths_ok=all(row.get("completion_len_min") == row.get("completion_len_max") == spec["completion_len"]
                              for row in steps if "completion_len_min" in row))


def set_deterministic_adapter(model, std: float = 0.02) -> list[str]:
    """Every trainable parameter from a seed derived from its (canonical) name: equal across backends."""
    import zlib

    import torch

    names = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            key = canonical_name(name)
            generator = torch.Generator().manual_seed(zlib.crc32(key.encode()))
            p.copy_((torch.randn(p.shape, generator=generator) * std).to(p.dtype))
            names.append(key)
    return names


def verify_batch(tokenizer, generations: int, prompt_len: int, completion_len: int, alpha: float, seed: int):
    """A fixed batch: random byte tokens, completions of lengths ``C`` down to about ``C/2``, varied rewards."""
    import torch

    from thinkless_lite.losses import loss_token_weights

    g = torch.Generator().manual_seed(seed)
    b, c = generations, completion_len
    prompt_ids = torch.randint(1, 257, (b, prompt_len), generator=g)  # byte tokens only
    completion_ids = torch.randint(1, 257, (b, c), generator=g)
    lengths = torch.tensor([max(2, c - (i * c) // (2 * b)) for i in range(b)])
    mask = (torch.arange(c)[None, :] < lengths[:, None]).long()
    completion_ids[mask == 0] = tokenizer.pad_token_id
    rewards = torch.tensor([REWARD_PATTERN[i % len(REWARD_PATTERN)] for i in range(b)])
    advantages = rewards - rewards.mean()  # one group of `generations`; scale_rewards off, as released
    n = mask.sum().float()
    weights = loss_token_weights(mask.float(), alpha=alpha, decoupled=True, normalizer=n)
    per_token = advantages[:, None] * weights
    return {
        "prompt_ids": prompt_ids, "prompt_mask": torch.ones_like(prompt_ids), "completion_ids": completion_ids,
        "completion_mask": mask, "num_items_in_batch": n, "advantages_bt": per_token, "advantages_b": advantages,
        "expected_loss_bt": float(-(per_token * mask).sum() / n),
        "expected_loss_b": float(-(advantages[:, None] * mask).sum() / n),
    }


def worker_verify(spec: dict, record: dict) -> None:
    import torch
    from datasets import Dataset
    from transformers import set_seed

    from thinkless_lite.compat import plain_logps_and_entropies
    from thinkless_lite.losses import degrpo_loss
    from thinkless_lite.rl import grpo_config
    from thinkless_lite.trainer import DeGRPOTrainer

    cuda = torch.cuda.is_available()
    clock = _Clock(cuda)
    cfg = _run_config(spec)
    set_seed(spec["seed"])
    loaded = _load(spec, cfg, clock, record)
    model = loaded.model
    record["adapter_parameters"] = len(set_deterministic_adapter(model))
    args = grpo_config(cfg, Path(spec["work_dir"]) / "trainer")
    trainer = DeGRPOTrainer(model=model, reward_funcs=[varied_reward], args=args,
                            train_dataset=Dataset.from_list([{"prompt": "a b c"}]), processing_class=loaded.tokenizer,
                            alpha=cfg.rl.alpha, decoupled=True)
    batch = verify_batch(loaded.tokenizer, spec["generations"], spec["prompt_len"], spec["completion_len"],
                         cfg.rl.alpha, spec["seed"])
    device = trainer.accelerator.device
    inputs = {k: batch[k].to(device) for k in ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask",
                                               "num_items_in_batch")}
    inputs["old_per_token_logps"] = None
    model.train()
    trainer.current_gradient_accumulation_steps = 1
    params = {canonical_name(n): p for n, p in model.named_parameters() if p.requires_grad}

    def grads_of(loss) -> dict:
        model.zero_grad(set_to_none=True)
        loss.backward()
        out = {k: p.grad.detach().float().cpu().clone() for k, p in params.items() if p.grad is not None}
        model.zero_grad(set_to_none=True)
        return out

    clock.reset_peak()
    loss = trainer.compute_loss(model, {**inputs, "advantages": batch["advantages_bt"].to(device)})
    grads = grads_of(loss)
    record.update(status="ok", loss=float(loss.detach()), expected_loss_bt=batch["expected_loss_bt"],
                  expected_loss_if_per_sequence=batch["expected_loss_b"], grad_tensors=len(grads),
                  zero_grad_tensors=sum(int(g.abs().max() == 0) for g in grads.values()),
                  missing_grad_tensors=sorted(set(params) - set(grads))[:20], alpha=cfg.rl.alpha,
                  batch={"sequences": spec["generations"], "prompt_len": spec["prompt_len"],
                         "completion_len": spec["completion_len"],
                         "completion_lengths": batch["completion_mask"].sum(1).tolist()})
    record["memory"] = clock.peaks()
    record["adapter_dtypes"] = sorted({str(p.dtype).replace("torch.", "") for p in params.values()})
    try:
        with torch.no_grad():
            seq_loss = trainer.compute_loss(model, {**inputs, "advantages": batch["advantages_b"].to(device)})
        record["loss_with_per_sequence_advantages"] = float(seq_loss)
    except Exception as err:  # noqa: BLE001 - a diagnostic, not the check
        record["loss_with_per_sequence_advantages"] = f"failed: {type(err).__name__}: {err}"[:500]
    grads_path = Path(spec["work_dir"]) / "grads.pt"
    torch.save(grads, grads_path)
    record["grads_file"] = str(grads_path)

    # The package's reference: degrpo_loss on plain-forward log-probs, same model, same batch.
    try:
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        logps, _, _ = plain_logps_and_entropies(trainer, model, input_ids, attention, spec["completion_len"],
                                                batch_size=1)
        reference = degrpo_loss(logps, logps.detach(), batch["advantages_b"].to(device),
                                inputs["completion_mask"], alpha=cfg.rl.alpha, clip_eps=cfg.rl.clip_eps,
                                decoupled=True)
        ref_grads = grads_of(reference)
        record["reference"] = {"loss": float(reference.detach()), **compare_grads(grads, ref_grads)}
    except Exception as err:  # noqa: BLE001 - e.g. a backend whose forward returns no logits in training
        record["reference"] = {"error": f"{type(err).__name__}: {err}"[:500]}


def compare_grads(a: dict, b: dict) -> dict:
    """How far gradients ``a`` are from ``b`` over the parameters both have."""

    common = sorted(set(a) & set(b))
    if not common:
        return {"compared_tensors": 0, "only_in_a": len(a), "only_in_b": len(b)}
    max_abs, max_rel, dot, na, nb, nd = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    for k in common:
        x, y = a[k].double(), b[k].double()
        diff = (x - y).abs()
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float(diff.max() / y.abs().max().clamp(min=1e-30)))
        dot += float((x * y).sum())
        na += float((x * x).sum())
        nb += float((y * y).sum())
        nd += float(((x - y) ** 2).sum())
    return {"compared_tensors": len(common), "only_in_a": len(set(a) - set(b)), "only_in_b": len(set(b) - set(a)),
            "max_abs": max_abs, "max_rel": max_rel, "rel_l2": (nd ** 0.5) / max(nb ** 0.5, 1e-30),
            "cosine": dot / max((na ** 0.5) * (nb ** 0.5), 1e-30)}


def worker_main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    out = Path(spec["result"])
    record: dict = {"shape": spec["shape"], "backend": spec["backend"], "task": spec["task"]}
    try:
        import torch

        if spec.get("threads"):
            torch.set_num_threads(spec["threads"])
        cuda = torch.cuda.is_available()
        record["device"] = _device_info(cuda)
        if spec["task"] == "build":
            record.update(status="ok", checkpoint=build_checkpoint(spec["shape"], Path(spec["checkpoint"])))
        else:
            ok, why = _import_for_backend(spec["backend"])
            record["trainer_mro"], record["unsloth_trainer_in_mro"] = _trainer_lineage()
            if not ok:
                record.update(status="skipped", reason=why)
            elif spec["task"] == "bench":
                worker_bench(spec, record)
            else:
                worker_verify(spec, record)
    except BaseException as err:  # noqa: BLE001 - report, never crash the whole benchmark
        oom = type(err).__name__ in ("OutOfMemoryError",) or "out of memory" in str(err).lower()
        record.update(status="oom" if oom else "error", error=f"{type(err).__name__}: {err}"[:2000],
                      traceback=traceback.format_exc()[-4000:])
        try:
            import torch

            if torch.cuda.is_available():
                record["memory_at_error"] = {"peak_allocated_gb": round(torch.cuda.max_memory_allocated() / GB, 3),
                                             "peak_reserved_gb": round(torch.cuda.max_memory_reserved() / GB, 3)}
        except Exception:  # noqa: BLE001
            pass
    out.write_text(json.dumps(record, indent=2, default=str) + "\n")
    return 0


# ============================================================================ parent (orchestration, report)

def _spawn(spec: dict, work: Path, args) -> dict:
    """Run one worker process; its JSON record, or an error record with the log's tail."""
    tag = f"{spec['task']}-{spec['shape']}-{spec['backend']}"
    run_dir = work / tag
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = {**spec, "work_dir": str(run_dir), "result": str(run_dir / "result.json")}
    Path(spec["result"]).unlink(missing_ok=True)  # never read a result left by an earlier run
    (run_dir / "spec.json").write_text(json.dumps(spec, indent=2))
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join([str(REPO)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    log_path = run_dir / "log.txt"
    began = time.perf_counter()
    if args.in_process:  # tests and debugging: no isolation between backends, output not logged
        print(f"[gpu_step] {tag}: running in this process", flush=True)
        for key in ("HF_HUB_OFFLINE", "TOKENIZERS_PARALLELISM"):
            os.environ.setdefault(key, env[key])
        worker_main(str(run_dir / "spec.json"))
        rc = 0
    else:
        print(f"[gpu_step] {tag}: running (log {log_path})", flush=True)
        rc = _run_worker_process(run_dir, env, log_path, args)
    wall = round(time.perf_counter() - began, 2)
    result = Path(spec["result"])
    if result.exists():
        record = json.loads(result.read_text())
    else:
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        record = {"shape": spec["shape"], "backend": spec["backend"], "task": spec["task"], "status": "error",
                  "error": f"worker exited ({rc}) without a result", "log_tail": tail}
    if record.get("status") in ("error", "oom") and log_path.exists():
        record.setdefault("log_tail", log_path.read_text(errors="replace")[-3000:])
    record["worker_wall_s"] = wall
    print(f"[gpu_step] {tag}: {record.get('status')}"
          + (f" ({record.get('reason') or record.get('error')})" if record.get("status") != "ok" else ""), flush=True)
    return record


def _run_worker_process(run_dir: Path, env: dict, log_path: Path, args) -> int | str:
    with open(log_path, "w") as log:
        try:
            command = [sys.executable, str(Path(__file__).resolve()), "--_worker", str(run_dir / "spec.json")]
            proc = subprocess.run(command,
                                  stdout=None if args.verbose else log,
                                  stderr=None if args.verbose else subprocess.STDOUT,
                                  env=env, cwd=str(REPO), timeout=args.worker_timeout)
            return proc.returncode
        except subprocess.TimeoutExpired:
            return "timeout"


def _skip_up_front(backend: str, device: str, cuda_available: bool) -> str | None:
    if device == "cuda" and not cuda_available:
        return "--device cuda but torch sees no CUDA GPU"
    if backend in UNSLOTH_BACKENDS and device != "cuda":
        return "no CUDA GPU (Unsloth needs one); --device cpu" if cuda_available else "no CUDA GPU (Unsloth needs one)"
    return None


def targets(results: dict) -> list[dict]:
    """PASS / MISS per target; 'n/a' where the run cannot say (CPU, skipped, failed)."""
    rows = []
    on_gpu = results["settings"]["device"] == "cuda"
    by = {(r["shape"], r["backend"]): r for r in results["runs"]}
    for (shape, backend), run in by.items():
        if shape not in TARGET_PEAK_GB:
            continue
        limit = TARGET_PEAK_GB[shape]
        peak = (run.get("peak") or {}).get("peak_reserved_gb") if run.get("status") == "ok" else None
        if run.get("status") == "oom":
            status, note = "MISS", "out of memory"
        elif not on_gpu:
            status, note = "n/a", "not on a GPU"
        elif peak is None:
            status, note = "n/a", run.get("status", "")
        else:
            status, note = ("PASS" if peak <= limit else "MISS"), ""
        rows.append({"target": f"peak reserved GPU memory, {shape}, {backend}", "value": peak,
                     "limit": f"<= {limit:g} GB", "status": status, "note": note})
    for shape in dict.fromkeys(r["shape"] for r in results["runs"]):
        hf = by.get((shape, "hf"))
        for variant in UNSLOTH_BACKENDS:
            un = by.get((shape, variant))
            if un is None or hf is None:
                continue
            h = (hf.get("summary") or {}).get("step_s")
            u = (un.get("summary") or {}).get("step_s")
            ratio = h / u if h and u else None
            if not on_gpu:
                status, note = "n/a", "not on a GPU"
            elif ratio is None:
                status, note = "n/a", f"hf {hf.get('status')}, {variant} {un.get('status')}"
            else:
                status, note = ("PASS" if ratio >= TARGET_SPEEDUP else "MISS"), ""
            rows.append({"target": f"speed-up per step, {shape}, {variant} vs hf", "value": ratio,
                         "limit": f">= {TARGET_SPEEDUP:g}x", "status": status, "note": note})
    return rows


def verify_checks(results: dict) -> list[dict]:
    """Loss equals the (B, T) closed form; gradients agree with hf's; hf agrees with degrpo_loss."""
    import torch

    rows = []
    runs = {(r["shape"], r["backend"]): r for r in results["runs"]}
    for (shape, backend), run in runs.items():
        if run.get("status") != "ok":
            rows.append({"check": f"{shape}/{backend}", "status": run.get("status"),
                         "note": run.get("reason") or run.get("error", "")})
            continue
        exp_bt, exp_b, loss = run["expected_loss_bt"], run["expected_loss_if_per_sequence"], run["loss"]
        tol = 1e-3 * max(1.0, abs(exp_bt))
        rows.append({"check": f"{shape}/{backend}: loss == closed form with (B, T) advantages", "value": loss,
                     "expected": exp_bt, "abs_diff": abs(loss - exp_bt),
                     "status": "PASS" if abs(loss - exp_bt) <= tol else "MISS",
                     "note": f"tolerance {tol:.1e}; (B,) advantages would give {exp_b:.6g}"})
        ref = run.get("reference") or {}
        if "cosine" in ref:
            ok = ref["rel_l2"] <= 1e-2 and ref["cosine"] >= 0.999  # adapters are bf16 (TRL casts QLoRA adapters)
            rows.append({"check": f"{shape}/{backend}: trainer gradients == degrpo_loss reference gradients",
                         "value": ref["rel_l2"], "expected": 0.0, "status": "PASS" if ok else "MISS",
                         "note": "pass: rel_l2 <= 1e-2 and cosine >= 0.999; "
                                 f"max_abs {ref['max_abs']:.3g}, max_rel {ref['max_rel']:.3g}, "
                                 f"cosine {ref['cosine']:.6f}, reference loss {ref['loss']:.6g}"})
        elif ref:
            rows.append({"check": f"{shape}/{backend}: reference", "status": "n/a", "note": ref.get("error", "")})
        hf = runs.get((shape, "hf"))
        if backend != "hf" and hf and hf.get("status") == "ok":
            cmp = compare_grads(torch.load(run["grads_file"]), torch.load(hf["grads_file"]))
            run["vs_hf"] = cmp
            ok = cmp.get("compared_tensors", 0) > 0 and cmp["cosine"] >= 0.99 and cmp["rel_l2"] <= 0.1
            rows.append({"check": f"{shape}/{backend}: LoRA gradients == hf's", "value": cmp.get("rel_l2"),
                         "expected": 0.0, "status": "PASS" if ok else "MISS",
                         "note": ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                           for k, v in cmp.items())
                         + "; pass: cosine >= 0.99 and rel_l2 <= 0.1 (two 4-bit kernels, bf16)"})
    return rows


def run_notes(results: dict) -> list[str]:
    """What a reader of the numbers must know: forced lengths, generation without KV cache, Unsloth's trainer."""
    notes = []
    for r in results["runs"]:
        if r.get("status") != "ok":
            continue
        tag = f"{r['shape']}/{r['backend']}"
        if not r.get("forced_lengths_ok", True):
            notes.append(f"{tag}: completions were not all exactly {results['settings']['completion_len']} tokens.")
        if r.get("generation_in_train_mode_with_checkpointing"):
            notes.append(f"{tag}: generation ran in train mode with gradient checkpointing on. With transformers' "
                         "own decoder layers (hf) that disables the KV cache and generate() feeds one token at a "
                         "time without its context (degenerate completions, unrepresentative generation time); "
                         "rerun with --eval-mode-generation for the fixed behaviour.")
        if r["backend"] == "unsloth" and not r.get("unsloth_trainer_in_mro"):
            notes.append(f"{tag}: Unsloth was imported after TRL (as `thinkless-lite rl` does), so DeGRPOTrainer "
                         "derives from TRL's own GRPOTrainer, not Unsloth's rewritten one (see unsloth-first).")
    return notes


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}" if abs(value) >= 10 ** -digits or value == 0 else f"{value:.2e}"
    return str(value)


def markdown(results: dict) -> str:
    s, dev = results["settings"], results["device"]
    versions = ", ".join(f"{k} {v}" for k, v in results["versions"].items() if v)
    title = "DeGRPO loss check (--verify-loss)" if s["mode"] == "verify-loss" else "DeGRPO step benchmark"
    device = dev.get("name") or s["device"]
    if dev.get("total_memory_gb"):
        device += f" ({dev['total_memory_gb']} GB, compute capability {dev.get('capability')})"
    lines = [f"# gpu_step: {title}", "", f"- date: {results['created']}", f"- device: {device}",
             f"- versions: {versions}",
             f"- settings: prompt {s['prompt_len']} tokens, completion {s['completion_len']} tokens (forced), "
             f"{s['generations']} generations x {s['prompts']} prompt(s) per step, "
             f"gradient accumulation {s['grad_accum']}, {s['steps']} step(s) (first {s['warmup_steps']} left out "
             f"of medians), recipe {s['config']}", ""]
    if s["mode"] == "bench":
        lines += ["| shape | backend | status | peak reserved GB | peak allocated GB | load peak reserved GB | "
                  "peak RSS GB | load s | generation s | rollout s | update s | step s | gen tok/s | update tok/s | "
                  "Unsloth trainer in MRO |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["runs"]:
            sm, pk = r.get("summary") or {}, r.get("peak") or {}
            status = r.get("status", "?")
            if status != "ok":
                status += f": {(r.get('reason') or r.get('error') or '')[:120]}"
            lines.append(f"| {r['shape']} | {r['backend']} | {status} | {_fmt(pk.get('peak_reserved_gb'), 2)} | "
                         f"{_fmt(pk.get('peak_allocated_gb'), 2)} | "
                         f"{_fmt((r.get('load_memory') or {}).get('peak_reserved_gb'), 2)} | "
                         f"{_fmt(pk.get('peak_rss_gb'), 2)} | "
                         f"{_fmt(r.get('load_s'), 1)} | {_fmt(sm.get('generate_s'), 2)} | "
                         f"{_fmt(sm.get('rollout_s'), 2)} | "
                         f"{_fmt(sm.get('update_s'), 2)} | {_fmt(sm.get('step_s'), 2)} | "
                         f"{_fmt(sm.get('generation_tokens_per_s'), 1)} | {_fmt(sm.get('update_tokens_per_s'), 1)} | "
                         f"{_fmt(r.get('unsloth_trainer_in_mro'))} |")
        lines += ["", "| target | measured | limit | result | note |", "|---|---|---|---|---|"]
        for t in results["targets"]:
            lines.append(f"| {t['target']} | {_fmt(t['value'], 2)} | {t['limit']} | {t['status']} | {t['note']} |")
        notes = run_notes(results)
        if notes:
            lines += ["", "Notes:", ""] + [f"- {n}" for n in notes]
    else:
        lines += ["| shape | backend | status | loss | closed form (B, T) | if (B,) | loss with (B,) advantages | "
                  "vs hf: cosine | vs hf: rel L2 | vs hf: max abs |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in results["runs"]:
            cmp = r.get("vs_hf") or {}
            status = r.get("status", "?")
            if status != "ok":
                status += f": {(r.get('reason') or r.get('error') or '')[:120]}"
            lines.append(f"| {r['shape']} | {r['backend']} | {status} | {_fmt(r.get('loss'), 6)} | "
                         f"{_fmt(r.get('expected_loss_bt'), 6)} | {_fmt(r.get('expected_loss_if_per_sequence'), 6)} | "
                         f"{_fmt(r.get('loss_with_per_sequence_advantages'), 6)} | {_fmt(cmp.get('cosine'), 6)} | "
                         f"{_fmt(cmp.get('rel_l2'), 4)} | {_fmt(cmp.get('max_abs'), 4)} |")
        lines += ["", "| check | result | note |", "|---|---|---|"]
        for c in results["checks"]:
            lines.append(f"| {c['check']} | {c['status']} | {c.get('note', '')} |")
    if s["device"] != "cuda":
        lines += ["", f"Run on {s['device']}: GPU memory and speed targets are not assessed. {NOT_MEASURED}"]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default="1.5b,7b", help="comma list of 1.5b, 7b, tiny (default 1.5b,7b)")
    p.add_argument("--tiny", action="store_true", help="the tiny Qwen2 shape only (CPU smoke runs)")
    p.add_argument("--backends", default=None,
                   help=f"comma list of {', '.join(BACKENDS)} "
                        "(default unsloth,hf; --verify-loss: unsloth,unsloth-first,hf)")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when torch sees one")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per run (default 3)")
    p.add_argument("--warmup-steps", type=int, default=1, help="first steps left out of the medians when more ran")
    p.add_argument("--prompt-len", type=int, default=256)
    p.add_argument("--completion-len", type=int, default=1024)
    p.add_argument("--generations", type=int, default=8, help="completions per prompt (the group)")
    p.add_argument("--prompts", type=int, default=1, help="prompts per optimizer step (default 1)")
    p.add_argument("--grad-accum", type=int, default=None,
                   help="micro-batches per step (default: the recipe's rl.gradient_accumulation_steps)")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="override the recipe's model setting")
    p.add_argument("--eval-mode-generation", action="store_true",
                   help="generate with the model in eval mode (KV cache on under gradient checkpointing); the "
                        "package's trainer generates in train mode today: see the docstring")
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="recipe whose model/rl settings are used")
    p.add_argument("--verify-loss", action="store_true", help="loss/gradient agreement check instead of timing")
    p.add_argument("--verify-alpha", type=float, default=0.5, help="DeGRPO alpha of the --verify-loss batch")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None, help="torch threads per worker (default: 1 on --device cpu)")
    p.add_argument("--out", default="runs/gpu_step/results.json", help="JSON output; Markdown goes beside it")
    p.add_argument("--md", default=None, help="Markdown output (default: --out with .md)")
    p.add_argument("--work-dir", default=None, help="checkpoints and worker logs (default: a temporary folder)")
    p.add_argument("--keep-work", action="store_true", help="keep --work-dir (checkpoints are reused when kept)")
    p.add_argument("--worker-timeout", type=int, default=7200, help="seconds per worker process")
    p.add_argument("--in-process", action="store_true",
                   help="run the workers in this process (tests, debugging): no isolation between backends")
    p.add_argument("-v", "--verbose", action="store_true", help="show workers' output instead of logging it")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args._worker:
        return worker_main(args._worker)
    import torch  # the parent never touches the GPU: is_available() creates no context

    cuda_available = torch.cuda.is_available()
    args.device = args.device or ("cuda" if cuda_available else "cpu")
    if args.threads is None and args.device == "cpu":
        args.threads = 1
    if args.in_process and args.device == "cpu" and cuda_available:
        raise SystemExit("--in-process cannot hide the GPU from torch: drop --in-process or use --device cuda")
    mode = "verify-loss" if args.verify_loss else "bench"
    shapes = ["tiny"] if args.tiny else _split(args.shapes)
    backends = _split(args.backends) or (["unsloth", "unsloth-first", "hf"] if args.verify_loss else ["unsloth", "hf"])
    for name in shapes:
        if name not in SHAPES:
            raise SystemExit(f"unknown shape {name!r}; choose from {', '.join(SHAPES)}")
    for name in backends:
        if name not in BACKENDS:
            raise SystemExit(f"unknown backend {name!r}; choose from {', '.join(BACKENDS)}")
    if args.verify_loss and "hf" in backends:  # hf first: the others are compared with it
        backends = ["hf"] + [b for b in backends if b != "hf"]
    from thinkless_lite.config import load_config

    recipe = load_config(args.config)
    grad_accum = args.grad_accum or recipe.rl.gradient_accumulation_steps
    if args.verify_loss:
        grad_accum = 1
    if (args.prompts * args.generations) % grad_accum:
        raise SystemExit(f"--prompts x --generations ({args.prompts * args.generations}) must be divisible by the "
                         f"gradient accumulation ({grad_accum}); pass --grad-accum")

    out = Path(args.out)
    md_path = Path(args.md) if args.md else out.with_suffix(".md")
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="gpu_step_"))
    work.mkdir(parents=True, exist_ok=True)
    results: dict = {
        "script": "benchmarks/gpu_step.py",
        "created": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "versions": installed_versions(), "expected_versions": EXPECTED_VERSIONS,
        "settings": {"mode": mode, "device": args.device, "shapes": shapes, "backends": backends,
                     "prompt_len": args.prompt_len, "completion_len": args.completion_len,
                     "generations": args.generations, "prompts": args.prompts, "grad_accum": grad_accum,
                     "steps": 1 if args.verify_loss else args.steps, "warmup_steps": args.warmup_steps,
                     "gradient_checkpointing": (not args.no_gradient_checkpointing
                                                and recipe.model.gradient_checkpointing),
                     "config": os.path.relpath(args.config, REPO) if Path(args.config).is_absolute() else args.config,
                     "verify_alpha": args.verify_alpha if args.verify_loss else None,
                     "eval_mode_generation": args.eval_mode_generation, "gb": "10^9 bytes"},
        "targets_spec": {"peak_reserved_gb": TARGET_PEAK_GB, "unsloth_speedup_vs_hf": TARGET_SPEEDUP},
        "device": {"name": None}, "checkpoints": {}, "runs": [],
    }
    failed = False
    try:
        for shape in shapes:
            checkpoint = work / f"ckpt-{shape}"
            for backend in backends:
                base = {"shape": shape, "backend": backend, "task": "bench" if mode == "bench" else "verify"}
                reason = _skip_up_front(backend, args.device, cuda_available)
                if reason:
                    results["runs"].append({**base, "status": "skipped", "reason": reason})
                    print(f"[gpu_step] {shape}/{backend}: skipped ({reason})", flush=True)
                    continue
                spec = {**base, "checkpoint": str(checkpoint), "config": str(Path(args.config).resolve()),
                        "prompt_len": args.prompt_len, "completion_len": args.completion_len,
                        "generations": args.generations, "prompts": args.prompts, "grad_accum": grad_accum,
                        "steps": args.steps, "warmup_steps": args.warmup_steps, "threads": args.threads,
                        "seed": args.seed, "verify_alpha": args.verify_alpha,
                        "gradient_checkpointing": False if args.no_gradient_checkpointing else None,
                        "eval_mode_generation": args.eval_mode_generation}
                if not (checkpoint / "config.json").exists():
                    built = _spawn({**spec, "task": "build", "backend": "build"}, work, args)
                    results["checkpoints"][shape] = built.get("checkpoint") or built
                    if built.get("status") != "ok":
                        results["runs"].append({**base, "status": "error",
                                                "error": f"building the checkpoint failed: {built.get('error')}",
                                                "log_tail": built.get("log_tail")})
                        failed = True
                        continue
                record = _spawn(spec, work, args)
                if record.get("device", {}).get("name") and not results["device"]["name"]:
                    results["device"] = record["device"]
                failed |= record.get("status") in ("error", "oom")
                results["runs"].append(record)
        if results["device"]["name"] is None:
            results["device"] = {"name": "CPU" if args.device == "cpu" else "no CUDA GPU", "cuda": cuda_available}
        if mode == "bench":
            results["targets"] = targets(results)
        else:
            results["checks"] = verify_checks(results)
            failed |= any(c["status"] == "MISS" for c in results["checks"])
    finally:
        if not args.keep_work and not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
        elif not args.keep_work:
            for child in work.glob("ckpt-*"):
                shutil.rmtree(child, ignore_errors=True)
    for run in results["runs"]:
        run.pop("grads_file", None)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    md_path.parent.mkdir(parents=True, exist_ok=True)
    md_path.write_text(markdown(results))
    print(markdown(results))
    print(f"[gpu_step] wrote {out} and {md_path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
