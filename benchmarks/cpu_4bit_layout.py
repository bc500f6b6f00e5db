"""Eval throughput of a 4-bit model on this CPU: bitsandbytes' AVX512-BF16 inference layout against the plain one.

    python benchmarks/cpu_4bit_layout.py [--questions 64] [--max-new-tokens 96] [--threads 2]

Why: on AVX512-BF16 CPUs bitsandbytes repacks 4-bit weights for inference on the first eval pass; a
model that will train must not be repacked (``thinkless_lite.model.keep_4bit_weights_trainable``), but
an inference-only load (eval, demo) keeps bitsandbytes' default. This script measures whether that
default pays: the shipped mini-world base, greedy, forced think, the same questions both ways.
On a CPU without AVX512-BF16 the packed kernel does not exist; the script says so and measures the
plain path alone.
"""

from __future__ import annotations

import argparse
import time


def measure(pack: bool, questions: list[str], max_new_tokens: int) -> tuple[float, int]:
    from thinkless_lite.config import load_config
    from thinkless_lite.generation import SamplingSettings, generate
    from thinkless_lite.model import load_model

    cfg = load_config(None, ["model.backend=hf"])
    loaded = load_model(cfg.model, trainable=False)
    if not pack:
        from thinkless_lite.model import keep_4bit_weights_trainable

        keep_4bit_weights_trainable(loaded.model)
    settings = SamplingSettings(max_new_tokens=max_new_tokens)
    generate(loaded.model, loaded.tokenizer, questions[:2], mode="think", settings=settings)  # warm-up (and repack)
    began = time.perf_counter()
    out = generate(loaded.model, loaded.tokenizer, questions, mode="think", settings=settings, batch_size=len(questions))
    return time.perf_counter() - began, sum(g.num_tokens for g in out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--questions", type=int, default=64)
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from bitsandbytes.functional import has_avx512bf16

    from thinkless_lite.data.miniworld import benchmark_items

    torch.set_num_threads(args.threads)
    questions = [item.question for item in benchmark_items(limit=args.questions, per_level=args.questions)]
    layouts = [False, True] if has_avx512bf16() else [False]
    if len(layouts) == 1:
        print("this CPU has no AVX512-BF16 (bitsandbytes.functional.has_avx512bf16() is False): bitsandbytes has no "
              "packed inference layout here, so there is nothing to compare; measuring the plain layout only")
    for pack in layouts:
        seconds, tokens = measure(pack, questions, args.max_new_tokens)
        print(f"{'AVX512-BF16 packed' if pack else 'plain 4-bit':>20}: {tokens} tokens in {seconds:.2f} s = "
              f"{tokens / seconds:.0f} tokens/s ({args.questions} questions, {args.threads} threads)")


if __name__ == "__main__":
    main()
