"""The embedded default model: a tiny Qwen2 "reasoning model" trained from scratch on the mini-world.

Like DeepSeek-R1-Distill it always thinks: it was trained on long-form solutions only, its
vocabulary already holds ``<think>``/``</think>`` (but not ``<short>``), and its chat template forces
``<think>`` after the generation prompt. It loads through ``AutoModelForCausalLM``/``AutoTokenizer``
like any hub model. Regenerate it with ``thinkless-lite build-base`` (deterministic on CPU).

The tokenizer is byte level with no merges (one token per byte, so character level for ASCII), built
as a real ``Qwen2Tokenizer`` so that transformers 5's rebuild of Qwen2 tokenizers is the identity and
spaces and newlines survive a save/load round trip.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from thinkless_lite.base import MINI_BASE_DIR


SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

# R1-Distill style: the template appends <think> after the assistant header, forcing a thinking opener.
MINI_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n<think>' }}{% endif %}"
)


def byte_alphabet() -> list[str]:
    """GPT-2's byte-to-unicode table in byte order: the 256 symbols a byte-level BPE works on."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            codes[byte] = chr(byte)
        else:
            codes[byte] = chr(256 + extra)
            extra += 1
    return [codes[b] for b in range(256)]


def build_tokenizer():
    """A real ``Qwen2Tokenizer`` (byte-level BPE) with no merges: one token per byte, ChatML specials.

    transformers 5 rebuilds any tokenizer saved beside a ``qwen2`` config as ``Qwen2Tokenizer``; a
    plain character vocabulary would lose spaces and newlines in that rebuild. Built as the same class
    from the start, a save/load round trip is the identity.
    """
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS[:3] + byte_alphabet())}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                               clean_up_tokenization_spaces=False)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    # <think> and </think> are ordinary added tokens, as in DeepSeek-R1-Distill: atomic, yet kept by
    # decode(skip_special_tokens=True), which TRL uses before scoring completions.
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in SPECIAL_TOKENS[3:]])
    tokenizer.chat_template = MINI_CHAT_TEMPLATE
    return tokenizer


@dataclass
class BaseTrainingConfig:
    """Sizes and schedule of the base model; the defaults reproduce the shipped weights."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    steps: int = 1500
    batch_size: int = 32
    learning_rate: float = 1e-3
    curriculum_steps: int = 75  # one more difficulty level every N steps, starting at k<=2
    warmup_steps: int = 100
    weight_decay: float = 0.01
    seed: int = 0
    threads: int = 1


def build_model(tokenizer, cfg: BaseTrainingConfig):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=None, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        rope_theta=10000.0)
    torch.manual_seed(cfg.seed)
    return Qwen2ForCausalLM(config)


def _long_form_batch(world, tokenizer, rng: random.Random, batch_size: int, device="cpu", max_level: int | None = None):
    """Prompt tokens masked with -100: the base learns to write solutions, not questions."""
    from thinkless_lite.data.miniworld import long_solution

    levels = [k for k in world.levels if max_level is None or k <= max_level]
    rows = []
    for _ in range(batch_size):
        expression = world._draw_expression(rng, rng.choice(levels))
        while _split(expression, world) != "train":
            expression = world._draw_expression(rng, rng.choice(levels))
        reasoning, answer = long_solution(expression)
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": expression}], tokenize=False,
                                               add_generation_prompt=True)  # ends with <think>
        rows.append((prompt, f"{reasoning}</think>{answer}<|im_end|>"))
    return completion_batch(tokenizer, rows, device)


def completion_batch(tokenizer, rows, device="cpu"):
    """(prompt, completion) text pairs -> right-padded (input ids, labels, attention mask), the prompt's labels
    -100 so that only the completion is learned."""
    import torch

    ids, labels = [], []
    for prompt, completion in rows:
        p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        c = tokenizer(completion, add_special_tokens=False)["input_ids"]
        ids.append(p + c)
        labels.append([-100] * len(p) + c)
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids], device=device)
    label_ids = torch.tensor([x + [-100] * (width - len(x)) for x in labels], device=device)
    attention = (torch.arange(width)[None, :] < torch.tensor([len(x) for x in ids])[:, None]).long().to(device)
    return input_ids, label_ids, attention


def _split(expression, world):
    from thinkless_lite.data.miniworld import split_of
    return split_of(expression, world.test_fraction)


def train_base(out_dir: str | Path = MINI_BASE_DIR, cfg: BaseTrainingConfig | None = None, progress: bool = True) -> dict:
    """Pretrain the tiny base from scratch (full parameters, long-form only) and save it."""
    import torch
    from tqdm.auto import tqdm
    from thinkless_lite.data.miniworld import MiniWorld

    cfg = cfg or BaseTrainingConfig()
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    world = MiniWorld(difficulty_weights={k: 1.0 for k in range(1, 9)}, seed=cfg.seed)
    tokenizer = build_tokenizer()
    model = build_model(tokenizer, cfg)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay,
                                  betas=(0.9, 0.98))

    def lr_at(step):
        if step < cfg.warmup_steps:
            return (step + 1) / cfg.warmup_steps
        return 0.5 * (1 + math.cos(math.pi * (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_at)
    rng = random.Random(cfg.seed)
    model.train()
    start = time.time()
    bar = tqdm(range(cfg.steps), desc="pretraining mini-base", disable=not progress)
    for step in bar:
        # A short curriculum: copying emerges quickly on short chains, then longer ones follow.
        max_level = 2 + step // cfg.curriculum_steps if cfg.curriculum_steps else None
        input_ids, labels, attention = _long_form_batch(world, tokenizer, rng, cfg.batch_size, max_level=max_level)
        loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    summary = {"final_loss": float(loss.item()), "seconds": round(time.time() - start, 1),
               "parameters": sum(p.numel() for p in model.parameters()), "config": asdict(cfg)}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
