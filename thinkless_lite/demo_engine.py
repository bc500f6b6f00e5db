"""The demo's engine: one model loaded once (from ``cfg.model`` and ``cfg.demo``) answering one question at a time.

What an interactive front end needs around :mod:`thinkless_lite.generation`: checked requests, a lock so
concurrent callers queue instead of interleaving on the same weights, and a forced-think comparison.
``demo/app.py`` and the notebooks' demo cells use it.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Iterator

import torch

from thinkless_lite.config import check_sources
from thinkless_lite.generation import Generation, SamplingSettings, StreamEvent, stream
from thinkless_lite.model import load_model
from thinkless_lite.tokens import THINK, ControlTokens, Routing


# How long a request waits for the model before giving up with a clear message (seconds).
DEFAULT_LOCK_TIMEOUT = 600.0


class ThinklessEngine:
    """One loaded model (base + optional adapter) answering one question at a time.

    Every generation holds ``self.lock`` from its decision step to its last token, so concurrent
    callers queue instead of interleaving on the same weights. A stream abandoned half way (a closed
    browser tab, a pressed Stop button) is finished in the background before the lock is released.
    """

    def __init__(self, model, tokenizer, *, tokens: ControlTokens = ControlTokens(), system_prompt: str | None = None,
                 max_input_chars: int = 2000, max_new_tokens: int = 256, name: str = "model",
                 adapter_path: str | None = None, backend: str | None = None,
                 lock_timeout: float = DEFAULT_LOCK_TIMEOUT):
        if max_input_chars < 1:
            raise ValueError(f"max_input_chars must be >= 1, got {max_input_chars}")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model
        self.tokenizer = tokenizer
        self.tokens = tokens
        self.system_prompt = system_prompt
        self.max_input_chars = int(max_input_chars)
        self.max_new_tokens = int(max_new_tokens)
        self.name = name
        self.adapter_path = adapter_path
        self.backend = backend
        self.lock_timeout = lock_timeout
        self.lock = threading.Lock()
        self.config = None  # the RunConfig it was loaded from (set by from_config)

    # ------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, cfg, adapter_path: str | None = None) -> "ThinklessEngine":
        """Load ``cfg.model`` (with ``adapter_path`` overriding ``cfg.model.adapter_path``) once, for inference."""
        model_cfg = cfg.model if adapter_path is None else dataclasses.replace(cfg.model, adapter_path=str(adapter_path))
        check_sources(model_cfg)
        if getattr(cfg, "threads", None):
            torch.set_num_threads(int(cfg.threads))
        loaded = load_model(model_cfg, trainable=False, seed=cfg.seed)
        name = model_cfg.name_or_path + (f" + {model_cfg.adapter_path}" if model_cfg.adapter_path else "")
        engine = cls(loaded.model, loaded.tokenizer, tokens=model_cfg.control_tokens,
                     system_prompt=model_cfg.system_prompt, max_input_chars=cfg.demo.max_input_chars,
                     max_new_tokens=cfg.demo.max_new_tokens, name=name, adapter_path=model_cfg.adapter_path,
                     backend=loaded.backend.name)
        engine.config = dataclasses.replace(cfg, model=model_cfg)
        return engine

    def describe(self) -> str:
        """One line naming the model, the adapter and the backend."""
        return f"{self.name} ({self.backend})" if self.backend else self.name

    # ------------------------------------------------------------ validation

    def validate(self, question, mode: str = "auto", tau: float | None = None,
                 max_new_tokens: int | None = None) -> tuple[str, int]:
        """Check a request; return (question stripped, token budget). Raises ValueError saying what to change."""
        if question is None:
            question = ""
        if not isinstance(question, str):
            raise ValueError(f"the question must be text, got {type(question).__name__}")
        question = question.strip()
        if not question:
            raise ValueError("Please enter a question (the input is empty).")
        if len(question) > self.max_input_chars:
            raise ValueError(f"The question is {len(question):,} characters long; the limit is "
                             f"{self.max_input_chars:,} characters (max_input_chars). Please shorten it.")
        if isinstance(tau, str):  # a threshold typed into a form
            try:
                tau = float(tau)
            except ValueError:
                raise ValueError(f"tau must be a number within 0..1; got {tau!r}") from None
        Routing(mode, tau)
        budget = self.max_new_tokens if max_new_tokens is None else int(max_new_tokens)
        if budget < 1:
            raise ValueError(f"max_new_tokens must be >= 1; got {budget}")
        return question, budget

    # ------------------------------------------------------------ generation

    def stream(self, question: str, mode: str = "auto", tau: float | None = None, max_new_tokens: int | None = None,
               temperature: float = 0.0, seed: int = 0) -> Iterator[StreamEvent]:
        """Validate, then re-yield :func:`stream`: ``decision``, ``text``..., ``done``.

        ``mode`` is auto | think | short; ``tau`` (auto only) routes to think when P(think) >= tau.
        Validation errors raise ``ValueError`` before anything is generated (and before the lock is taken).
        """
        question, budget = self.validate(question, mode, tau, max_new_tokens)
        tau = None if tau is None else float(tau)
        settings = SamplingSettings(max_new_tokens=budget, temperature=float(temperature), seed=int(seed))
        return self._locked_stream(question, mode, tau, settings)

    def _locked_stream(self, question: str, mode: str, tau: float | None,
                       settings: SamplingSettings) -> Iterator[StreamEvent]:
        if not self.lock.acquire(timeout=self.lock_timeout):
            raise RuntimeError(f"the model stayed busy for {self.lock_timeout:.0f} s; try again in a moment")
        events = stream(self.model, self.tokenizer, question, mode=mode, tau=tau, settings=settings,
                        tokens=self.tokens, system_prompt=self.system_prompt)
        try:
            for event in events:  # not `yield from`: that would close `events` too when we are closed
                yield event
        finally:
            if events.gi_frame is None:  # ran to the end, or raised: the model is idle again
                self.lock.release()
            else:
                # Abandoned mid-generation (the consumer closed us): :func:`stream`'s worker thread is still
                # generating. Let it finish off-thread and only then free the model for the next request.
                threading.Thread(target=self._drain, args=(events,), daemon=True, name="thinkless-drain").start()

    def _drain(self, events) -> None:
        try:
            for _ in events:
                pass
        except Exception:  # noqa: BLE001 - nobody is listening any more
            pass
        finally:
            self.lock.release()

    def answer(self, question: str, mode: str = "auto", tau: float | None = None, max_new_tokens: int | None = None,
               temperature: float = 0.0, seed: int = 0) -> Generation:
        """The finished Generation for one question (the ``done`` event of :meth:`stream`)."""
        generation = None
        for event in self.stream(question, mode=mode, tau=tau, max_new_tokens=max_new_tokens,
                                 temperature=temperature, seed=seed):
            if event.kind == "done":
                generation = event.generation
        if generation is None:  # pragma: no cover - stream() always ends with done
            raise RuntimeError("generation ended without a result")
        return generation

    def compare(self, question: str, mode: str = "auto", tau: float | None = None, max_new_tokens: int | None = None,
                temperature: float = 0.0, seed: int = 0) -> dict:
        """Answer with the requested mode and with forced think; how many tokens did the choice save?

        Returns ``{"question", "chosen": Generation, "think": Generation, "tokens_saved": int,
        "saved_fraction": float, "same_answer": bool}``; ``tokens_saved`` = think tokens - chosen tokens
        (negative when the chosen answer was the longer one). When the chosen mode already was think
        and decoding is greedy, the forced-think answer is the same text, so it is reused, not recomputed.
        """
        chosen = self.answer(question, mode=mode, tau=tau, max_new_tokens=max_new_tokens,
                             temperature=temperature, seed=seed)
        if chosen.mode == THINK and temperature <= 0:
            think = dataclasses.replace(chosen, requested="think")
        else:
            think = self.answer(question, mode="think", max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        saved = think.num_tokens - chosen.num_tokens
        return {"question": chosen.question, "chosen": chosen, "think": think, "tokens_saved": saved,
                "saved_fraction": saved / think.num_tokens if think.num_tokens else 0.0,
                "same_answer": chosen.answer.strip() == think.answer.strip()}

    def count_tokens(self, text: str) -> int:
        """Tokens in ``text`` under this model's tokenizer (for live counters while streaming)."""
        if not text:
            return 0
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])
