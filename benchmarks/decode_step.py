"""What one decode step of RL's generation costs, on merged LoRA weights against PEFT's unmerged forward, and its floor.

    python benchmarks/decode_step.py --adapter runs/real_model/smollm2/warmup/adapter     # SmolLM2 recipe, 16 rows
    python benchmarks/decode_step.py --model mini --adapter A --rows 16 --tokens 48

Loads the recipe's model with the adapter as RL does (trainable, then eval mode with the control rows folded and a
4-bit base dequantized once, as ``DeGRPOTrainer._generate_single_turn`` decodes) and decodes ``--rows`` RL prompts for
exactly ``--tokens`` tokens with ``model.generate``, greedy and sampled at the recipe's temperature, alternately
unmerged and merged (``thinkless_lite.compat.merged_lora_weights``), ``--repeats`` times each, all in one process:
on a shared machine read the ratios, not the milliseconds. A decode step is (decode time - prefill time) / (tokens
- 1), in this process's CPU time (wall time on a loaded machine is mostly waiting; with ``--threads 1`` CPU time is
the compute). Its floor is 2·N·rows FLOPs (N: ``rl_step.matmul_parameters``) at the throughput of a (rows x hidden) matmul
measured here, in wall time, and in CPU time that many threads times it (the floor's matmul keeps every thread busy;
until this was said, CPU ms at 2 threads were compared to a wall floor, 2x too high a ratio). The floor's matmul
reuses one cached weight; a decode step streams all of the model's weights from memory, so the benchmark also times
one pass of the same matmuls over the model's own weights (``rl_step.weight_sweep_seconds``): what the matmuls of a
decode step cost here, the rest of the step being attention, sampling and Python. Also says whether both decoded
the same tokens, and where the first differs if not. Then the part of a merged greedy decode step spent in the model's own
matmuls (``aten::mm``/``addmm``/``bmm`` under torch's profiler, a prefill-only decode subtracted): the least any
decode step costs with these fp32 weights, whatever is done about the rest; and the throughput of a bf16 matmul at
the same rows (the one way to halve the bytes streamed that keeps 16-bit accuracy: without AVX512-BF16 or AMX it is
far slower than fp32). The last line is one JSON object. Not a test.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import statistics
import sys
import time
import warnings
from pathlib import Path

import torch


def first_difference(a: torch.Tensor, b: torch.Tensor) -> list[int] | None:
    """(row, position) of the first token where two batches of sequences differ, or None when they are equal."""
    if torch.equal(a, b):
        return None
    rows, cols = (a != b).nonzero(as_tuple=True)
    at = int(cols.argmin())
    return [int(rows[at]), int(cols[at])]


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def matmul_seconds_in(run) -> tuple[float, int]:
    """(seconds, calls) of matrix multiplications inside ``run()``: the self time of torch's matmul kernels as its
    profiler records them (wall time on the calling thread, each kernel's intra-op threads inside it)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = [e for e in prof.key_averages() if e.key in MATMUL_OPS]
    return sum(e.self_cpu_time_total for e in events) / 1e6, sum(e.count for e in events)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="smollm2_135m_cpu")
    parser.add_argument("--model", default=None, help="mini | smollm2 | a folder, .gguf or hub id (default: the recipe's)")
    parser.add_argument("--adapter", required=True, help="a warm-up adapter")
    parser.add_argument("--rows", type=int, default=16, help="rows decoded together (RL: prompts x generations)")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from rl_step import matmul_flops_per_second, matmul_parameters, matmul_weights, recipe_and_model, weight_sweep_seconds

    from thinkless_lite.compat import dequantized_4bit_weights, merged_lora_weights
    from thinkless_lite.config import load_config
    from thinkless_lite.control_rows import control_rows_folded
    from thinkless_lite.model import load_model, select_backend
    from thinkless_lite.stages import rl
    from thinkless_lite.tokens import format_prompt

    torch.set_num_threads(args.threads)
    config, model_name = recipe_and_model(args.config, args.model)
    cfg = load_config(config, [f"model.name_or_path={model_name}"] if model_name else [])
    select_backend(cfg.model.backend)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(dataclasses.replace(cfg.model, adapter_path=args.adapter), trainable=True, seed=args.seed)
    model, tokenizer = loaded.model, loaded.tokenizer
    model.eval()
    questions = [item.question for item in rl.rl_items(cfg)[:args.rows]]
    tokenizer.padding_side = "left"
    batch = tokenizer([format_prompt(tokenizer, q) for q in questions], return_tensors="pt", padding=True,
                      add_special_tokens=False)

    def decode(merged: bool, sampled: bool, tokens: int) -> tuple[float, torch.Tensor]:
        sampling = {"do_sample": True, "temperature": cfg.rl.trl["temperature"], "top_p": 1.0, "top_k": None} if sampled \
            else {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
        torch.manual_seed(args.seed)
        weights = merged_lora_weights(model) if merged else contextlib.nullcontext(model)
        began, wall = time.process_time(), time.perf_counter()
        with torch.no_grad(), control_rows_folded(model), weights, dequantized_4bit_weights(model):
            out = model.generate(**batch, max_new_tokens=tokens, min_new_tokens=tokens,
                                 pad_token_id=tokenizer.pad_token_id, **sampling)
        return (time.process_time() - began, time.perf_counter() - wall), out[:, batch["input_ids"].shape[1]:]

    config_ = model.config
    dtype = next(p for p in model.parameters() if p.dtype.is_floating_point).dtype
    dtype = torch.float32 if dtype not in (torch.float32, torch.bfloat16, torch.float16) else dtype
    flops = matmul_flops_per_second(args.rows, config_.hidden_size, config_.intermediate_size, dtype)
    n_params = matmul_parameters(model)
    floor_ms = 2 * n_params * args.rows / flops * 1e3
    floor_cpu_ms = floor_ms * args.threads  # the floor's matmul keeps every thread busy: CPU time = threads x wall
    print(f"N = {n_params / 1e6:.1f} M; {flops / 1e9:.1f} GFLOP/s at {args.rows} rows: floor {floor_ms:.1f} ms a "
          f"decode step ({floor_cpu_ms:.1f} CPU ms at {args.threads} thread(s); wall-clock throughput: on a loaded "
          "machine the floor is too high)", flush=True)
    sweep_wall, sweep_cpu = weight_sweep_seconds(matmul_weights(model), args.rows)
    print(f"the same matmuls on the model's own weights, one pass at {args.rows} rows: {sweep_wall * 1e3:.1f} ms "
          f"({sweep_cpu * 1e3:.1f} CPU ms), {sweep_wall * 1e3 / floor_ms:.1f}x the FLOP floor: the weights stream "
          "from memory at every step", flush=True)

    summary = {"model": cfg.model.name_or_path, "rows": args.rows, "tokens": args.tokens, "threads": args.threads,
               "matmul_parameters": n_params, "matmul_gflops_decode": round(flops / 1e9, 1),
               "floor_ms": round(floor_ms, 2), "floor_cpu_ms": round(floor_cpu_ms, 2),
               "weight_sweep_ms": round(sweep_wall * 1e3, 2), "weight_sweep_cpu_ms": round(sweep_cpu * 1e3, 2)}
    for sampled in (False, True):
        label = "sampled" if sampled else "greedy"
        steps = {False: [], True: []}
        walls = {False: [], True: []}
        outputs = {}
        for _ in range(args.repeats):
            for merged in (False, True):  # alternated, so both see the same load
                prefill, _ = decode(merged, sampled, 1)
                total, outputs[merged] = decode(merged, sampled, args.tokens)
                steps[merged].append((total[0] - prefill[0]) / (args.tokens - 1) * 1e3)
                walls[merged].append((total[1] - prefill[1]) / (args.tokens - 1) * 1e3)
        for merged in (False, True):
            name = f"{label}_{'merged' if merged else 'unmerged'}"
            cpu_ms = summary[f"{name}_ms"] = round(statistics.median(steps[merged]), 1)
            wall_ms = summary[f"{name}_wall_ms"] = round(statistics.median(walls[merged]), 1)
            print(f"{label:8s} {'merged' if merged else 'unmerged':9s} {cpu_ms:8.1f} CPU ms a decode step "
                  f"({cpu_ms / floor_cpu_ms:.1f}x the floor's CPU ms, {cpu_ms / (sweep_cpu * 1e3):.1f}x the weight "
                  f"sweep's); wall {wall_ms:.1f} ms ({wall_ms / floor_ms:.1f}x the floor); CPU runs: "
                  f"{', '.join(f'{s:.0f}' for s in steps[merged])}", flush=True)
        summary[f"{label}_speedup"] = round(summary[f"{label}_unmerged_ms"] / summary[f"{label}_merged_ms"], 2)
        summary[f"{label}_first_difference"] = first_difference(outputs[True], outputs[False])

    in_prefill, _ = matmul_seconds_in(lambda: decode(True, False, 1))
    in_decode, _ = matmul_seconds_in(lambda: decode(True, False, args.tokens))
    matmul_ms = summary["greedy_merged_matmul_ms"] = round((in_decode - in_prefill) / (args.tokens - 1) * 1e3, 1)
    print(f"of a greedy merged decode step, the model's own matmuls: {matmul_ms:.1f} ms ({matmul_ms / floor_ms:.1f}x the "
          f"FLOP floor; torch's profiler, prefill subtracted): no decode step here costs less with fp32 weights",
          flush=True)
    if dtype == torch.float32:
        bf16 = summary["matmul_gflops_decode_bf16"] = round(
            matmul_flops_per_second(args.rows, config_.hidden_size, config_.intermediate_size, torch.bfloat16) / 1e9, 1)
        print(f"a bf16 matmul at {args.rows} rows here: {bf16:.1f} GFLOP/s against fp32's {flops / 1e9:.1f} "
              "(bf16 weights would halve the bytes streamed; this CPU computes bf16 matmuls at that rate)", flush=True)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
