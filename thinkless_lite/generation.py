"""Generation: batched and streaming answers that report the mode the model chose and why.

The decision step is made explicit: one forward pass over the prompt gives the first-token
distribution, from which we read P(<think>) = p(think) / (p(think) + p(short)) and pick the control
token (sampled in ``auto``, forced in ``think``/``short``, thresholded with ``tau``: a
:class:`~thinkless_lite.tokens.Routing`). Generation then continues from prompt + control token.
Evaluation, training data generation, the demo's engine (:mod:`thinkless_lite.demo_engine`) and the
notebooks all call this module.
"""

from __future__ import annotations

import contextlib
import threading
import time
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

import torch

from thinkless_lite.control_rows import control_rows_folded
from thinkless_lite.ended_rows import ended_rows_dropped
from thinkless_lite.tokens import ControlTokens, Routing, format_prompt, parse_completion
from thinkless_lite.vocabulary import end_token_ids


@dataclass
class Generation:
    """One answer: what was asked, which mode was taken, what came out and what it cost."""

    question: str
    mode: str | None          # think | short | None (no control token: a format error)
    requested: str            # auto | think | short | tau=<value>
    p_think: float            # P(<think>) at the decision step, renormalised over the two control tokens
    reasoning: str
    answer: str
    completion: str           # raw decoded completion, control token included
    num_tokens: int           # generated tokens, control token and end-of-sequence included
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class SamplingSettings:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _lora_merged(model, merge: bool):
    """:func:`~thinkless_lite.compat.merged_lora_weights` when ``merge``, else nothing."""
    from thinkless_lite.compat import merged_lora_weights  # imports peft: only once a model is there

    return merged_lora_weights(model) if merge else contextlib.nullcontext(model)


def _sample(logits: torch.Tensor, settings: SamplingSettings, generator: torch.Generator) -> torch.Tensor:
    """Greedy at temperature 0, else temperature + nucleus sampling, row-wise: transformers' own warpers, so the
    decision step samples as ``model.generate`` samples the rest, but seeded by ``generator``."""
    if settings.temperature <= 0:
        return logits.argmax(dim=-1)
    # Imported here: this module is imported before the model loads, and Unsloth must precede transformers.
    from transformers import LogitsProcessorList, TemperatureLogitsWarper, TopPLogitsWarper

    warpers = LogitsProcessorList([TemperatureLogitsWarper(float(settings.temperature))])
    if settings.top_p < 1.0:  # as generate does: top_p=1 keeps every token
        warpers.append(TopPLogitsWarper(settings.top_p))
    probs = torch.softmax(warpers(None, logits.float()), dim=-1)  # the warpers read no input ids
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@torch.no_grad()
def decide(model, tokenizer, prompts: Sequence[str], *, mode: str = "auto", tau: float | None = None,
           settings: SamplingSettings = SamplingSettings(), tokens: ControlTokens = ControlTokens(),
           generator: torch.Generator | None = None):
    """The decision step for a batch: (encoded prompts, first token ids, P(think) per prompt)."""
    Routing(mode, tau)
    tokenizer.padding_side = "left"
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False).to(_device(model))
    logits = model(**batch).logits[:, -1, :]
    short_id, think_id = tokenizer.convert_tokens_to_ids([tokens.short, tokens.think])
    pair = torch.softmax(logits[:, [short_id, think_id]].float(), dim=-1)
    p_think = pair[:, 1]
    if mode == "think":
        first = torch.full_like(p_think, think_id, dtype=torch.long)
    elif mode == "short":
        first = torch.full_like(p_think, short_id, dtype=torch.long)
    elif tau is not None:
        first = torch.where(p_think >= tau, think_id, short_id).long()
    else:
        generator = generator or torch.Generator().manual_seed(settings.seed)
        first = _sample(logits, settings, generator)
    return batch, first, p_think.tolist()


def _end_ids(model, tokenizer) -> list[int]:
    """The ids that end this model's answers (:func:`~thinkless_lite.vocabulary.end_token_ids`)."""
    return end_token_ids(tokenizer, getattr(model, "generation_config", None))


def _generate_kwargs(model, tokenizer, settings: SamplingSettings) -> dict:
    kwargs = {"max_new_tokens": max(settings.max_new_tokens - 1, 1), "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": _end_ids(model, tokenizer), "do_sample": settings.temperature > 0}
    if settings.temperature > 0:
        kwargs.update(temperature=settings.temperature, top_p=settings.top_p)
    else:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    return kwargs


def _count_tokens(ids: torch.Tensor, tokenizer, ends: Sequence[int]) -> int:
    """Generated tokens up to and including the first end-of-sequence (padding excluded)."""
    ids = ids.tolist()
    stops = [i for i, t in enumerate(ids) if t in ends]
    if stops:
        return stops[0] + 1
    return sum(1 for t in ids if t != tokenizer.pad_token_id)


@torch.no_grad()
def generate(model, tokenizer, questions: Sequence[str], *, mode: str = "auto", tau: float | None = None,
             settings: SamplingSettings = SamplingSettings(), tokens: ControlTokens = ControlTokens(),
             system_prompt: str | None = None, batch_size: int = 32, progress: bool = False,
             merge_lora: bool = True, drop_ended_rows: bool = True) -> list[Generation]:
    """Answer ``questions`` in batches; ``mode`` auto|think|short, ``tau`` thresholds P(think) in auto.

    ``merge_lora``: decode each LoRA layer as one matmul on a merged copy of its weight
    (:func:`~thinkless_lite.compat.merged_lora_weights`; the model's weights untouched); False: PEFT's forward.
    ``drop_ended_rows``: decode only the answers still being written (:mod:`thinkless_lite.ended_rows`); False:
    every row to the batch's longest answer."""
    requested = Routing(mode, tau).label
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    ends = _end_ids(model, tokenizer)
    was_training = model.training
    model.eval()
    starts = range(0, len(questions), batch_size)
    with control_rows_folded(model), _lora_merged(model, merge_lora), ended_rows_dropped(model, drop_ended_rows):
        results = _generate_batches(model, tokenizer, questions, starts, batch_size, mode, tau, settings, tokens,
                                    system_prompt, generator, ends, requested, progress)
    if was_training:
        model.train()
    return results


def _generate_batches(model, tokenizer, questions, starts, batch_size, mode, tau, settings, tokens, system_prompt,
                      generator, ends, requested, progress) -> list[Generation]:
    from tqdm.auto import tqdm

    results: list[Generation] = []
    for start in tqdm(starts, desc=f"generating ({requested})", disable=not progress):
        chunk = list(questions[start:start + batch_size])
        began = time.time()
        prompts = [format_prompt(tokenizer, q, system_prompt, tokens=tokens) for q in chunk]
        batch, first, p_think = decide(model, tokenizer, prompts, mode=mode, tau=tau, settings=settings,
                                       tokens=tokens, generator=generator)
        input_ids = torch.cat([batch["input_ids"], first[:, None]], dim=1)
        attention = torch.cat([batch["attention_mask"], torch.ones_like(first[:, None])], dim=1)
        finished = torch.isin(first, torch.tensor(ends, device=first.device))
        out = model.generate(input_ids=input_ids, attention_mask=attention, **_generate_kwargs(model, tokenizer, settings))
        new_ids = out[:, input_ids.shape[1]:]
        elapsed = (time.time() - began) / len(chunk)
        for i, question in enumerate(chunk):
            rest = new_ids[i] if not finished[i] else new_ids[i][:0]
            completion_ids = torch.cat([first[i:i + 1], rest])
            text = tokenizer.decode(completion_ids, skip_special_tokens=True)
            parsed = parse_completion(text, tokens)
            results.append(Generation(
                question=question, mode=parsed.mode, requested=requested, p_think=float(p_think[i]),
                reasoning=parsed.reasoning, answer=parsed.answer, completion=text,
                num_tokens=1 + (_count_tokens(rest, tokenizer, ends) if len(rest) else 0), seconds=elapsed))
    return results


@dataclass
class StreamEvent:
    """``decision`` (mode and P(think) known), ``text`` (a new piece of completion), or ``done``."""

    kind: str
    text: str = ""
    mode: str | None = None
    p_think: float | None = None
    generation: Generation | None = None


def stream(model, tokenizer, question: str, *, mode: str = "auto", tau: float | None = None,
           settings: SamplingSettings = SamplingSettings(), tokens: ControlTokens = ControlTokens(),
           system_prompt: str | None = None, merge_lora: bool = True) -> Iterator[StreamEvent]:
    """Yield the decision first, then text as it is generated, then the finished Generation (``merge_lora`` as in
    :func:`generate`)."""
    model.eval()
    with control_rows_folded(model), _lora_merged(model, merge_lora):  # one row: no ended rows to drop
        yield from _stream(model, tokenizer, question, mode=mode, tau=tau, settings=settings, tokens=tokens,
                           system_prompt=system_prompt)


def _stream(model, tokenizer, question: str, *, mode: str, tau: float | None, settings: SamplingSettings,
            tokens: ControlTokens, system_prompt: str | None) -> Iterator[StreamEvent]:
    from transformers import TextIteratorStreamer

    requested = Routing(mode, tau).label
    began = time.time()
    prompt = format_prompt(tokenizer, question, system_prompt, tokens=tokens)
    torch.manual_seed(settings.seed)
    batch, first, p_think = decide(model, tokenizer, [prompt], mode=mode, tau=tau, settings=settings, tokens=tokens)
    first_text = tokenizer.decode(first, skip_special_tokens=True)
    chosen = parse_completion(first_text, tokens).mode
    yield StreamEvent("decision", text=first_text, mode=chosen, p_think=p_think[0])
    pieces = [first_text]
    count = 1
    ends = _end_ids(model, tokenizer)
    if int(first[0]) not in ends:
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        input_ids = torch.cat([batch["input_ids"], first[:, None]], dim=1)
        attention = torch.ones_like(input_ids)
        kwargs = dict(input_ids=input_ids, attention_mask=attention, streamer=streamer,
                      **_generate_kwargs(model, tokenizer, settings))
        holder: dict = {}

        def run():
            try:
                with torch.no_grad():
                    holder["out"] = model.generate(**kwargs)
            except Exception as err:  # noqa: BLE001 - re-raised in the caller's thread below
                holder["error"] = err
                streamer.end()

        worker = threading.Thread(target=run, daemon=True)
        worker.start()
        for piece in streamer:
            if piece:
                pieces.append(piece)
                yield StreamEvent("text", text=piece)
        worker.join()
        if "error" in holder:
            raise holder["error"]
        count += _count_tokens(holder["out"][0, input_ids.shape[1]:], tokenizer, ends)
    text = "".join(pieces)
    parsed = parse_completion(text, tokens)
    yield StreamEvent("done", mode=parsed.mode, p_think=p_think[0], generation=Generation(
        question=question, mode=parsed.mode, requested=requested, p_think=p_think[0], reasoning=parsed.reasoning,
        answer=parsed.answer, completion=text, num_tokens=count, seconds=time.time() - began))
