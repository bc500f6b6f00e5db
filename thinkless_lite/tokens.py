"""Control tokens: the one place that knows how a Thinkless completion is laid out.

A completion is either ``<think>`` reasoning ``</think>`` answer-part, or ``<short>`` answer-part,
as in the paper's release. Everything that formats prompts or reads completions goes through here,
so the reward, the evaluation and the demo can never disagree about what a model "chose".
"""

from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass

THINK = "think"
SHORT = "short"
MODES = (THINK, SHORT)
ROUTING_MODES = ("auto", THINK, SHORT)

# A ChatML template used when a tokenizer ships none (warned at load time).
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass(frozen=True)
class ControlTokens:
    """The strings that mark each mode. Configurable because some bases already own ``<think>``."""

    short: str = "<short>"
    think: str = "<think>"
    think_end: str = "</think>"

    def opener(self, mode: str) -> str:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        return self.think if mode == THINK else self.short

    @property
    def all(self) -> tuple[str, str, str]:
        return (self.short, self.think, self.think_end)


@dataclass(frozen=True)
class Routing:
    """How the control token is picked: sampled (``auto``), forced (``think`` / ``short``), or thresholded
    (``auto`` with ``tau``: think when P(<think>) >= tau). The one place a routing is checked: the
    config, generation, evaluation, the engine and the demo all build one of these."""

    mode: str = "auto"
    tau: float | None = None

    def __post_init__(self):
        if self.mode not in ROUTING_MODES:
            raise ValueError(f"mode must be one of {', '.join(ROUTING_MODES)}; got {self.mode!r}")
        if self.tau is None:
            return
        tau = self.tau
        if isinstance(tau, bool) or not isinstance(tau, (int, float)) or math.isnan(tau) or not 0.0 <= tau <= 1.0:
            raise ValueError(f"tau must be a number within 0..1 (think when P(<think>) >= tau; 0 = always think); "
                             f"got {tau!r}. For forced short use mode='short'.")
        if self.mode != "auto":
            raise ValueError(f"tau thresholds the model's own choice, so it needs mode='auto'; got mode={self.mode!r}")
        object.__setattr__(self, "tau", float(tau))

    @property
    def label(self) -> str:
        """auto | think | short | tau=<value>: how records and reports name this routing."""
        return self.mode if self.tau is None else f"tau={self.tau:g}"


@dataclass(frozen=True)
class ParsedCompletion:
    """What a completion says: which mode it chose, its reasoning, and its final-answer text.

    ``mode`` is None when the completion does not start with a control token (a format error).
    ``answer`` is the text after ``</think>`` (think) or after ``<short>`` (short); for a think
    completion that never closes its reasoning, ``answer`` is empty and ``closed`` is False.
    """

    mode: str | None
    reasoning: str
    answer: str
    closed: bool = True

    @property
    def format_ok(self) -> bool:
        return self.mode is not None and self.closed


def format_completion(mode: str, answer: str, reasoning: str = "", tokens: ControlTokens = ControlTokens()) -> str:
    """Lay out a training completion in the paper's release format."""
    if mode == THINK:
        return f"{tokens.think}{reasoning}{tokens.think_end}{answer}"
    if mode == SHORT:
        return f"{tokens.short}{answer}"
    raise ValueError(f"mode must be one of {MODES}, got {mode!r}")


def parse_completion(text: str | None, tokens: ControlTokens = ControlTokens()) -> ParsedCompletion:
    """Split a completion into (mode, reasoning, answer). Never raises on arbitrary text.

    Leading whitespace before the control token is tolerated (some tokenizers decode a space);
    anything else first means no mode was chosen.
    """
    if not isinstance(text, str):
        return ParsedCompletion(None, "", "", closed=False)
    body = text.lstrip()
    if body.startswith(tokens.short):
        return ParsedCompletion(SHORT, "", body[len(tokens.short):].strip())
    if body.startswith(tokens.think):
        rest = body[len(tokens.think):]
        reasoning, sep, answer = rest.partition(tokens.think_end)
        if not sep:
            return ParsedCompletion(THINK, rest.strip(), "", closed=False)
        return ParsedCompletion(THINK, reasoning.strip(), answer.strip())
    return ParsedCompletion(None, "", body.strip(), closed=False)


def neutralise_chat_template(template: str | None, tokens: ControlTokens = ControlTokens()) -> str | None:
    """Remove a forced thinking opener emitted after the generation prompt.

    DeepSeek-R1-Distill and Qwen3 (thinking on) templates append ``<think>\\n`` after the assistant
    header, which would make the choice for the model. We strip that literal from the template's
    generation-prompt branch so the first generated token is the model's own decision.
    """
    if not template:
        return template
    opener = re.escape(tokens.think)
    # '<think>\n' or '<think>' inside a quoted Jinja string literal, e.g. {{ '<|Assistant|><think>\n' }}.
    pattern = re.compile(opener + r"(?:\\n|\n)?")
    head, sep, tail = template.partition("add_generation_prompt")
    if not sep:
        return template
    new_tail = pattern.sub("", tail)
    if new_tail != tail:
        warnings.warn("chat template forced a thinking opener after the generation prompt; removed it so the model chooses",
                      stacklevel=2)
    return head + sep + new_tail


def format_prompt(tokenizer, question: str, system_prompt: str | None = None, mode: str | None = None,
                  tokens: ControlTokens = ControlTokens()) -> str:
    """The one function that turns a question into model input text.

    ``mode`` appends that mode's control token, which forces the choice (forced think / short).
    """
    messages = []
    if system_prompt:
        messages.append({"role": "system", "content": system_prompt})
    messages.append({"role": "user", "content": question})
    if getattr(tokenizer, "chat_template", None):
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    else:
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant: "
    if mode is not None:
        text += tokens.opener(mode)
    return text
