"""Teacher models run here: the warm-up's ``generate`` source, a reasoning and an instruct teacher answering.

Its own module because it loads and runs models; :mod:`thinkless_lite.data.hybrid` reads the answers back
from the file and builds the examples from text alone.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
from tqdm.auto import tqdm

from thinkless_lite.data.hybrid import check_questions, read_teacher_file
from thinkless_lite.jsonl import append_jsonl
from thinkless_lite.base import load_base, resolve_model_path
from thinkless_lite.model import compute_dtype, select_backend
from thinkless_lite.tokens import format_prompt
from thinkless_lite.vocabulary import end_token_ids


def generate_teacher_file(model_name: str, questions: Sequence[str], out_path: str | Path, *, role: str,
                          batch_size: int = 8, max_new_tokens: int = 1024, system_prompt: str | None = None,
                          instruction: str | None = None, temperature: float = 0.0, seed: int = 0,
                          backend: str = "auto", progress: bool = True) -> Path:
    """Run one teacher over ``questions``, appending ``{"index", "role", "question", "response", "truncated"}``
    lines to a JSONL.

    Resumable: indices already in the file for this role are skipped, so a killed run continues
    where it stopped. The teacher answers with its own chat template (an R1 template's forced
    ``<think>`` is kept: that is how the reasoning teacher is meant to be run). ``instruction`` is
    appended to the question the teacher sees (the short teacher's "answer directly"); the student's
    examples keep the bare question. ``truncated`` records an answer that hit ``max_new_tokens``
    before any end-of-sequence token: cut-off answers are dropped when the examples are built.
    """
    if role not in ("long", "short"):
        raise ValueError(f"role must be 'long' or 'short', got {role!r}")
    out_path = Path(out_path)
    written = read_teacher_file(out_path)
    check_questions(written, questions, out_path)
    done = {row["index"] for row in written if row.get("role") == role}
    todo = [i for i in range(len(questions)) if i not in done]
    if not todo:
        return out_path
    tokenizer = _teacher_tokenizer(model_name)
    model = _teacher_model(model_name, backend)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    ends = end_token_ids(tokenizer, model.generation_config)
    bar = tqdm(total=len(todo), desc=f"{role} teacher ({Path(str(model_name)).name})", disable=not progress)
    for start in range(0, len(todo), batch_size):
        chunk = todo[start:start + batch_size]
        prompts = [format_prompt(tokenizer, questions[i] + (f"\n\n{instruction}" if instruction else ""), system_prompt)
                   for i in chunk]
        batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
        with torch.no_grad():
            out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=temperature > 0,
                                 temperature=temperature if temperature > 0 else None, top_p=None, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=ends)
        new_ids = out[:, batch["input_ids"].shape[1]:]
        texts = tokenizer.batch_decode(new_ids, skip_special_tokens=True)
        finished = torch.isin(new_ids, torch.tensor(ends, device=new_ids.device)).any(dim=1).tolist()
        append_jsonl(out_path, [{"index": index, "role": role, "question": questions[index], "response": text,
                                 "truncated": not ended} for index, text, ended in zip(chunk, texts, finished)])
        bar.update(len(chunk))
    bar.close()
    return out_path


def _teacher_tokenizer(model_name: str):
    """The teacher's own tokenizer and chat template, padding on the left for batched generation."""
    # Imported here: stages/warmup imports this module before Unsloth, which must precede transformers.
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(model_name))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _teacher_model(model_name: str, backend: str):
    """NF4 on a GPU unless ``backend`` is ``full``; full precision on the CPU. Never an adapter: it only answers."""
    quantised = select_backend(backend).name != "full" and torch.cuda.is_available()
    return load_base(model_name, "hf" if quantised else "full", compute_dtype("auto"), double_quant=False).eval()
