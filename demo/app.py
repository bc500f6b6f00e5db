"""Gradio demo: watch a Thinkless model decide when to think.

UI only: every question goes through :class:`thinkless_lite.generation.ThinklessEngine`. The page streams
the answer, shows the control token the model chose (``short`` / ``think``) the moment it is chosen,
P(think) as a bar, the reasoning in a collapsible "Thinking" message, and what the answer cost.

    thinkless-lite demo --config mini [--adapter runs/mini/rl/adapter] [--port 7860] [--share]

Safe defaults: binds 127.0.0.1, no public link unless ``--share``, a bounded queue, input length
limit. ``gradio_client`` can call ``Client(url).predict(question, mode, tau, api_name="/answer")``.
"""

from __future__ import annotations

import argparse
import html
import logging
import time
from pathlib import Path
from typing import Iterator

import gradio as gr

from thinkless_lite.config import DemoConfig, RunConfig, load_config
from thinkless_lite.demo.render import render_answer
from thinkless_lite.generation import ThinklessEngine
from thinkless_lite.tokens import SHORT, THINK, Routing, parse_completion


log = logging.getLogger("thinkless_lite.demo")

MODE_AUTO, MODE_THINK, MODE_SHORT, MODE_TAU = "Auto", "Force think", "Force short", "Threshold"
MODE_CHOICES = [MODE_AUTO, MODE_THINK, MODE_SHORT, MODE_TAU]
# API and UI spellings of a mode -> (engine mode, uses tau)
_MODES = {MODE_AUTO: ("auto", False), MODE_THINK: ("think", False), MODE_SHORT: ("short", False),
          MODE_TAU: ("auto", True), "auto": ("auto", None), "think": ("think", False), "short": ("short", False),
          "threshold": ("auto", True), "tau": ("auto", True)}

LATEX_DELIMITERS = [
    {"left": "$$", "right": "$$", "display": True},
    {"left": "$", "right": "$", "display": False},
    {"left": "\\(", "right": "\\)", "display": False},
    {"left": "\\[", "right": "\\]", "display": True},
]

# Carried by every gr.HTML (css_template, scoped to the component), so the page is styled however it is launched.
CSS = """
h1 { margin: 4px 0 2px 0; font-size: 1.55rem; }
p.tl-sub { margin: 0 0 4px 0; color: var(--body-text-color-subdued); }
.tl-card { border: 1px solid var(--border-color-primary); border-radius: 12px; padding: 14px 16px;
           background: var(--block-background-fill); }
.tl-label { font-size: 0.78rem; text-transform: uppercase; letter-spacing: .06em;
            color: var(--body-text-color-subdued); margin-bottom: 6px; font-weight: 600; }
.tl-badge { display: inline-flex; align-items: center; gap: 8px; padding: 7px 16px; border-radius: 999px;
            font-weight: 700; font-size: 1.15rem; letter-spacing: .04em; border: 2px solid transparent;
            font-family: var(--font-mono); }
.tl-badge .tl-dot { width: 10px; height: 10px; border-radius: 50%; background: currentColor; }
.tl-badge[data-mode="short"] { background: #dcfce7; color: #047857; border-color: #10b981; }
.tl-badge[data-mode="think"] { background: #ede9fe; color: #6d28d9; border-color: #8b5cf6; }
.tl-badge[data-mode="none"] { background: #fee2e2; color: #b91c1c; border-color: #ef4444; }
.tl-badge[data-mode="idle"] { background: #f3f4f6; color: #6b7280; border-color: #d1d5db; }
.tl-badge[data-mode="pending"] { background: #fef3c7; color: #b45309; border-color: #f59e0b;
                                 animation: tl-pulse 1s ease-in-out infinite; }
@keyframes tl-pulse { 50% { opacity: .55; } }
.tl-badge-note { margin-left: 10px; color: var(--body-text-color-subdued); font-size: .9rem; }
.tl-bar { position: relative; height: 18px; border-radius: 9px; overflow: hidden;
          background: linear-gradient(90deg, #dcfce7, #ede9fe); border: 1px solid var(--border-color-primary); }
.tl-bar-fill { position: absolute; left: 0; top: 0; bottom: 0; border-radius: 9px;
               background: linear-gradient(90deg, #34d399, #8b5cf6); transition: width .25s ease; }
.tl-bar-tau { position: absolute; top: -3px; bottom: -3px; width: 3px; background: #111827; }
.tl-bar-legend { display: flex; justify-content: space-between; font-size: .8rem; margin-top: 4px;
                 color: var(--body-text-color-subdued); }
.tl-bar-value { font-family: var(--font-mono); font-size: 1.05rem; font-weight: 700; color: var(--body-text-color); }
.tl-stats { display: grid; grid-template-columns: repeat(3, 1fr); gap: 8px; }
.tl-stat { border-radius: 10px; padding: 8px 10px; background: var(--background-fill-secondary); }
.tl-stat b { display: block; font-size: 1.25rem; font-family: var(--font-mono); }
.tl-stat span { font-size: .78rem; color: var(--body-text-color-subdued); }
.tl-error { border: 1px solid #ef4444; background: #fef2f2; color: #991b1b; border-radius: 10px;
            padding: 10px 14px; font-weight: 500; }
.tl-compare table { width: 100%; border-collapse: collapse; font-size: .92rem; margin: 0; border: 0 !important;
                    table-layout: fixed; }
.tl-compare tr, .tl-compare tbody, .tl-compare thead { border: 0 !important; }
.tl-compare th, .tl-compare td { text-align: left; padding: 6px 8px; border: 0 !important;
                                 border-bottom: 1px solid var(--border-color-primary) !important; }
.tl-compare th:nth-child(1) { width: 22%; } .tl-compare th:nth-child(2) { width: 21%; }
.tl-compare th:nth-child(3) { width: 17%; } .tl-compare th:nth-child(4) { width: 14%; }
.tl-compare td.ans { font-family: var(--font-mono); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.tl-compare th { font-size: .75rem; text-transform: uppercase; color: var(--body-text-color-subdued); }
.tl-compare td.num { font-family: var(--font-mono); text-align: right; }
.tl-saved { margin-top: 10px; font-size: 1.05rem; }
.tl-saved b { color: #047857; font-family: var(--font-mono); }
.tl-muted { color: var(--body-text-color-subdued); font-size: .9rem; }
"""


# ---------------------------------------------------------------- small HTML pieces

def _esc(value) -> str:
    return html.escape(str(value), quote=True)


def badge_html(mode: str | None, state: str = "done", p_think: float | None = None) -> str:
    """The mode badge: idle | pending (deciding) | short | think | none (no control token)."""
    if state == "idle":
        key, label, note = "idle", "waiting", "ask a question"
    elif state == "pending":
        key, label, note = "pending", "deciding…", "reading the question"
    elif mode == SHORT:
        key, label, note = "short", "SHORT", "answers directly"
    elif mode == THINK:
        key, label, note = "think", "THINK", "reasons step by step"
    else:
        key, label, note = "none", "NO MODE", "no control token chosen"
    title = f' title="P(think) = {p_think:.3f}"' if p_think is not None else ""
    return (f'<div class="tl-card"><div class="tl-label">Mode chosen</div>'
            f'<span class="tl-badge" id="mode-badge-value" data-mode="{key}"{title}><span class="tl-dot"></span>'
            f'{label}</span><span class="tl-badge-note">{note}</span></div>')


def p_think_html(p_think: float | None, tau: float | None = None) -> str:
    """P(think) as a bar from short (0) to think (1), with the threshold marked in threshold mode."""
    width = 0.0 if p_think is None else max(0.0, min(1.0, p_think)) * 100
    value = "—" if p_think is None else f"{p_think:.3f}"
    data = "" if p_think is None else f' data-p="{p_think:.4f}"'
    tau_mark = "" if tau is None else f'<div class="tl-bar-tau" style="left: calc({tau * 100:.1f}% - 1px)" title="tau = {tau:g}"></div>'
    tau_note = "" if tau is None else f" · τ = {tau:g}"
    return (f'<div class="tl-card" id="p-think-value"{data}><div class="tl-label">P(think) at the decision'
            f'</div><div style="display:flex;align-items:baseline;gap:10px;margin-bottom:6px">'
            f'<span class="tl-bar-value">{value}</span><span class="tl-muted">p(&lt;think&gt;) / '
            f'(p(&lt;think&gt;) + p(&lt;short&gt;)){tau_note}</span></div>'
            f'<div class="tl-bar"><div class="tl-bar-fill" style="width:{width:.1f}%"></div>{tau_mark}</div>'
            f'<div class="tl-bar-legend"><span>0 · short</span><span>1 · think</span></div></div>')


def stats_html(num_tokens: int | None = None, seconds: float | None = None, requested: str = "—",
               live: bool = False, question: str | None = None, answer: str | None = None) -> str:
    """Tokens generated and seconds, live while streaming; data-state is idle | live | done."""
    tokens = "—" if num_tokens is None else f"{num_tokens}"
    secs = "—" if seconds is None else f"{seconds:.2f}"
    state = "live" if live else ("idle" if num_tokens is None else "done")
    label = {"live": "generating…", "idle": "last answer", "done": "last answer"}[state]
    asked = "" if question is None else f' data-question="{_esc(question)}"'
    asked += "" if answer is None else f' data-answer="{_esc(answer)}"'
    return (f'<div class="tl-card" id="gen-stats-value" data-state="{state}" data-tokens="{_esc(tokens)}"{asked}>'
            f'<div class="tl-label">{label}</div>'
            f'<div class="tl-stats"><div class="tl-stat"><b>{tokens}</b><span>tokens generated</span></div>'
            f'<div class="tl-stat"><b>{secs}</b><span>seconds</span></div>'
            f'<div class="tl-stat"><b style="font-size:1rem">{_esc(requested)}</b><span>requested</span></div></div></div>')


def error_html(message: str | None) -> str:
    return "" if not message else f'<div class="tl-error" role="alert">⚠ {_esc(message)}</div>'


def compare_html(result: dict | None, pending: str | None = None) -> str:
    if pending:
        return f'<div class="tl-card tl-compare"><div class="tl-label">Compare</div><span class="tl-muted">{_esc(pending)}</span></div>'
    if not result:
        return ('<div class="tl-card tl-compare"><div class="tl-label">Compare</div><span class="tl-muted">'
                'Press <b>Compare</b> to answer the question again with forced thinking and see how many '
                'tokens the model\'s own choice saved.</span></div>')
    chosen, think = result["chosen"], result["think"]

    def row(label, g):
        text = g.answer if g.answer else "(none)"
        answer = _esc(text if len(text) <= 40 else text[:39] + "…")
        return (f'<tr><td>{label}</td><td><span class="tl-badge" style="font-size:.8rem;padding:2px 10px" '
                f'data-mode="{g.mode or "none"}">{_esc(g.mode or "none")}</span></td>'
                f'<td class="num">{g.num_tokens}</td><td class="num">{g.seconds:.2f}</td><td class="ans" '
                f'title="{_esc(text)}">{answer}</td></tr>')

    saved = result["tokens_saved"]
    if chosen.mode is None:
        verdict = (f"The model chose no mode (a format error); its answer used <b>{abs(saved)}</b> tokens "
                   f"{'fewer' if saved >= 0 else 'more'} than forced thinking.")
    elif saved > 0:
        verdict = f'Choosing <b>{_esc(chosen.mode)}</b> saved <b>{saved}</b> tokens ({result["saved_fraction"]:.0%}).'
    elif saved == 0 and chosen.mode == THINK:
        verdict = "No tokens saved: the model chose to think here too."
    elif saved == 0:
        verdict = "No tokens saved: both answers are equally long."
    else:
        verdict = f"The chosen answer was <b>{-saved}</b> tokens longer than forced thinking."
    same = "same answer" if result["same_answer"] else "different answers"
    return (f'<div class="tl-card tl-compare" id="compare-value" data-saved="{saved}"><div class="tl-label">'
            f'Compare · {_esc(result["question"])}</div><table><tr><th></th><th>mode</th><th>tokens</th><th>sec</th>'
            f'<th>answer</th></tr>{row("chosen", chosen)}{row("forced think", think)}</table>'
            f'<div class="tl-saved">{verdict} <span class="tl-muted">({same})</span></div></div>')


def resolve_mode(mode: str, tau: float | None) -> tuple[str, float | None]:
    """UI label or API word -> (engine mode, tau or None), checked as a :class:`~thinkless_lite.tokens.Routing`."""
    key = mode if mode in _MODES else str(mode).strip().lower()
    if key not in _MODES:
        raise ValueError(f"mode must be one of {', '.join(MODE_CHOICES)} (or auto, think, short, threshold); got {mode!r}")
    engine_mode, uses_tau = _MODES[key]
    if uses_tau is None:  # API "auto": thresholded when a tau is given
        uses_tau = tau is not None
    if uses_tau and tau is None:
        raise ValueError("threshold mode needs tau (0..1)")
    try:
        routing = Routing(engine_mode, float(tau) if uses_tau else None)
    except (TypeError, ValueError) as err:
        raise ValueError(str(err) if not isinstance(err, TypeError) else f"tau must be a number within 0..1; got {tau!r}") from None
    return routing.mode, routing.tau


def _settings(max_new_tokens, temperature, seed) -> tuple[int | None, float, int]:
    """Generation settings from the page; a cleared field falls back to its default."""
    try:
        budget = None if max_new_tokens in (None, "") else int(max_new_tokens)
        return budget, float(temperature or 0.0), int(seed or 0)
    except (TypeError, ValueError):
        raise ValueError("generation settings must be numbers (max new tokens, temperature, seed)") from None


def _answer_text(answer: str) -> str:
    """The final answer for the chat: LaTeX-ready; a one-line answer gets a bold "Answer:" label."""
    text = render_answer(answer)
    if not text:
        return "…"
    return f"**Answer:** {text}" if "\n" not in text and len(text) <= 200 else text


def _assistant_messages(completion: str, tokens, *, finished: bool, seconds: float,
                        footer: str = "") -> list[dict]:
    """Chat messages for a (partial) completion: a collapsible "Thinking" message, then the answer."""
    parsed = parse_completion(completion, tokens)
    messages: list[dict] = []
    if parsed.mode == THINK:
        thinking_done = finished or parsed.closed
        messages.append({"role": "assistant", "content": render_answer(parsed.reasoning) or "…",
                         "metadata": {"title": "Thinking", "status": "done" if thinking_done else "pending",
                                      **({"duration": round(seconds, 2)} if thinking_done else {})}})
        if parsed.closed:
            messages.append({"role": "assistant", "content": _answer_text(parsed.answer) + footer})
        elif finished:
            messages.append({"role": "assistant",
                             "content": "_The reasoning did not close within the token budget: no answer._" + footer})
    elif parsed.mode == SHORT:
        messages.append({"role": "assistant", "content": _answer_text(parsed.answer) + footer})
    elif finished or completion.strip():
        raw = completion.strip().replace("`", "ˋ") or "(empty)"
        messages.append({"role": "assistant", "content": "_No control token: the model did not choose a mode._\n\n"
                                                         f"```\n{raw}\n```" + footer})
    return messages


# ---------------------------------------------------------------- the app

def _html(value: str, **kwargs) -> gr.HTML:
    return gr.HTML(value, css_template=CSS, js_on_load=None, **kwargs)


class _EngineHolder:
    """The engine every session uses; the model picker swaps it."""

    def __init__(self, engine: ThinklessEngine, name: str | None):
        self.engine = engine
        self.name = name


def build_app(engine: ThinklessEngine, demo_cfg: DemoConfig, model_choices: dict[str, str] | None = None) -> gr.Blocks:
    """The demo page around ``engine``; ``model_choices`` (name -> config YAML or adapter folder) fills the picker."""
    model_choices = dict(model_choices or {})
    holder = _EngineHolder(engine, None)
    limit = demo_cfg.max_input_chars

    def model_line() -> str:
        picked = f"**{holder.name}** · " if holder.name else ""
        return f"**Model:** {picked}`{holder.engine.describe()}`"

    def respond(question, history, mode_label, tau, max_new_tokens, temperature, seed) -> Iterator[tuple]:
        history = list(history or [])
        current = holder.engine
        keep = gr.update()
        try:
            mode, tau_value = resolve_mode(mode_label, tau)
            budget, temperature, seed = _settings(max_new_tokens, temperature, seed)
            events = current.stream(question, mode=mode, tau=tau_value, max_new_tokens=budget,
                                    temperature=temperature, seed=seed)
        except ValueError as err:
            gr.Warning(str(err))
            yield history, keep, keep, keep, keep, error_html(str(err)), keep
            return
        question = question.strip()
        history.append({"role": "user", "content": render_answer(question)})
        yield (history, "", badge_html(None, "pending"), p_think_html(None, tau_value),
               stats_html(requested=mode_label, live=True), error_html(None), question)
        began = time.time()
        completion, p_think, chosen = "", None, None
        try:
            for event in events:
                if event.kind == "decision":
                    p_think, chosen = event.p_think, event.mode
                    completion += event.text
                    yield (history + _assistant_messages(completion, current.tokens, finished=False, seconds=0.0),
                           keep, badge_html(chosen, p_think=p_think), p_think_html(p_think, tau_value),
                           stats_html(current.count_tokens(completion), time.time() - began, mode_label, live=True),
                           keep, keep)
                elif event.kind == "text":
                    completion += event.text
                    yield (history + _assistant_messages(completion, current.tokens, finished=False,
                                                         seconds=time.time() - began),
                           keep, keep, keep,
                           stats_html(current.count_tokens(completion), time.time() - began, mode_label, live=True),
                           keep, keep)
                elif event.kind == "done":
                    g = event.generation
                    footer = (f"\n\n<sub>{_esc(g.mode or 'no mode')} · {g.num_tokens} tokens · "
                              f"{g.seconds:.2f} s</sub>")
                    yield (history + _assistant_messages(g.completion, current.tokens, finished=True,
                                                         seconds=g.seconds, footer=footer),
                           keep, badge_html(g.mode, p_think=g.p_think), p_think_html(g.p_think, tau_value),
                           stats_html(g.num_tokens, g.seconds, g.requested, question=question, answer=g.answer), keep, keep)
        except Exception as err:  # noqa: BLE001 - shown in the page, never a dead spinner
            log.exception("generation failed")
            message = f"Generation failed: {type(err).__name__}: {err}"
            gr.Warning(message)
            yield (history + _assistant_messages(completion, current.tokens, finished=True, seconds=0.0),
                   keep, badge_html(chosen, p_think=p_think) if p_think is not None else badge_html(None, "idle"),
                   keep, stats_html(requested=mode_label), error_html(message), keep)

    def compare(question, last_question, mode_label, tau, max_new_tokens, temperature, seed) -> Iterator[tuple]:
        keep = gr.update()
        question = (question or "").strip() or (last_question or "")
        try:
            mode, tau_value = resolve_mode(mode_label, tau)
            budget, temperature, seed = _settings(max_new_tokens, temperature, seed)
            holder.engine.validate(question, mode, tau_value, budget)
        except ValueError as err:
            gr.Warning(str(err))
            yield keep, keep, keep, keep, error_html(str(err))
            return
        yield (compare_html(None, pending=f"Answering “{question}” with {mode_label.lower()} and with forced think…"),
               badge_html(None, "pending"), p_think_html(None, tau_value), stats_html(requested=mode_label, live=True),
               error_html(None))
        try:
            result = holder.engine.compare(question, mode=mode, tau=tau_value, max_new_tokens=budget,
                                           temperature=temperature, seed=seed)
        except Exception as err:  # noqa: BLE001
            log.exception("compare failed")
            message = f"Compare failed: {type(err).__name__}: {err}"
            gr.Warning(message)
            yield compare_html(None), badge_html(None, "idle"), keep, stats_html(requested=mode_label), error_html(message)
            return
        chosen = result["chosen"]
        yield (compare_html(result), badge_html(chosen.mode, p_think=chosen.p_think),
               p_think_html(chosen.p_think, tau_value),
               stats_html(chosen.num_tokens, chosen.seconds, chosen.requested, question=question),
               error_html(None))

    def load_model_choice(name):
        if not name:
            return model_line(), error_html("Pick a model first.")
        if name not in model_choices:
            return model_line(), error_html(f"Unknown model {name!r}.")
        path = Path(model_choices[name])
        try:
            if path.is_dir():  # an adapter folder on top of the current base
                base_cfg = getattr(holder.engine, "config", None) or RunConfig()
                new = ThinklessEngine.from_config(base_cfg, adapter_path=str(path))
            else:
                new = ThinklessEngine.from_config(load_config(path))
        except Exception as err:  # noqa: BLE001
            log.exception("loading %s failed", name)
            message = f"Could not load {name}: {type(err).__name__}: {err}"
            gr.Warning(message)
            return model_line(), error_html(message)
        holder.engine, holder.name = new, name
        gr.Info(f"Loaded {name}")
        return model_line(), error_html(None)

    def on_mode(mode_label):
        return gr.update(interactive=mode_label == MODE_TAU)

    def api_answer(question: str, mode: str = "auto", tau: float | None = None) -> dict:
        """Answer one question. mode: auto | think | short | threshold (UI labels work too); tau: 0..1 or None."""
        try:
            engine_mode, tau_value = resolve_mode(mode, tau)
            g = holder.engine.answer(question, mode=engine_mode, tau=tau_value)
        except ValueError as err:
            raise gr.Error(str(err)) from err
        return {"mode": g.mode, "answer": g.answer, "p_think": g.p_think, "reasoning": g.reasoning,
                "num_tokens": g.num_tokens, "seconds": g.seconds}

    examples = [[q] for q in demo_cfg.examples]
    with gr.Blocks(title="Thinkless — when to think", analytics_enabled=False) as demo:
        last_question = gr.State("")
        with gr.Row(elem_id="tl-header"):
            _html("<h1>Thinkless · watch the model decide when to think</h1>"
                    "<p class='tl-sub'>Each answer starts with a control token: <code>&lt;short&gt;</code> answers directly, "
                    "<code>&lt;think&gt;</code> reasons first. The decision and P(think) appear the moment the "
                    "first token is chosen.</p>", elem_id="tl-title")
        with gr.Row(equal_height=False):
            with gr.Column(scale=3, min_width=420):
                chatbot = gr.Chatbot(label="Conversation", elem_id="chat", height=540,
                                     latex_delimiters=LATEX_DELIMITERS, buttons=["copy"], feedback_options=None,
                                     group_consecutive_messages=True,
                                     placeholder="Ask a question, e.g. **7+3\\*2-5** (mini-world: chained one-digit "
                                                 "operations mod 10, left to right). Easy ones should get a short answer, "
                                                 "hard ones a chain of thought.")
                with gr.Row(equal_height=True):
                    question_box = gr.Textbox(show_label=False, placeholder=f"Ask a question (up to {limit:,} characters)",
                                              elem_id="question", scale=6, lines=1, max_lines=6, autofocus=True)
                    ask_btn = gr.Button("Ask", variant="primary", elem_id="ask-btn", scale=1, min_width=90)
                with gr.Row():
                    compare_btn = gr.Button("Compare", elem_id="compare-btn", variant="secondary")
                    stop_btn = gr.Button("Stop", elem_id="stop-btn", variant="stop")
                    clear_btn = gr.Button("Clear", elem_id="clear-btn")
                error_box = _html(error_html(None), elem_id="error-box")
                gr.Examples(examples=examples, inputs=[question_box], label="Examples (easy → hard)",
                            examples_per_page=max(len(examples), 1))
            with gr.Column(scale=2, min_width=340, elem_id="tl-side"):
                badge = _html(badge_html(None, "idle"), elem_id="mode-badge")
                p_bar = _html(p_think_html(None), elem_id="p-think-bar")
                stats = _html(stats_html(), elem_id="gen-stats")
                with gr.Group():
                    mode_radio = gr.Radio(MODE_CHOICES, value=MODE_AUTO, label="Mode", elem_id="mode-select",
                                          info="Auto lets the model choose; Threshold thinks when P(think) ≥ τ.")
                    tau_slider = gr.Slider(0.0, 1.0, value=0.5, step=0.01, label="τ (Threshold mode)",
                                           elem_id="tau", interactive=False)
                compare_out = _html(compare_html(None), elem_id="compare-result")
                with gr.Accordion("Generation settings", open=False):
                    max_tokens = gr.Slider(1, max(demo_cfg.max_new_tokens, 1), value=demo_cfg.max_new_tokens, step=1,
                                           label="Max new tokens", elem_id="max-new-tokens")
                    temperature = gr.Slider(0.0, 1.5, value=0.0, step=0.05, label="Temperature (0 = greedy)",
                                            elem_id="temperature")
                    seed = gr.Number(value=0, precision=0, label="Seed", elem_id="seed")
                with gr.Accordion("Model / adapter", open=False):
                    model_info = gr.Markdown(model_line(), elem_id="model-info")
                    with gr.Row(equal_height=True):
                        model_dd = gr.Dropdown(list(model_choices), value=holder.name, label="Model",
                                               elem_id="model-picker", interactive=bool(model_choices), scale=3)
                        load_btn = gr.Button("Load", elem_id="load-model-btn", interactive=bool(model_choices),
                                             scale=1, min_width=80)

        gen_inputs = [question_box, chatbot, mode_radio, tau_slider, max_tokens, temperature, seed]
        gen_outputs = [chatbot, question_box, badge, p_bar, stats, error_box, last_question]
        ask_event = ask_btn.click(respond, gen_inputs, gen_outputs, api_visibility="private", show_progress="hidden")
        submit_event = question_box.submit(respond, gen_inputs, gen_outputs, api_visibility="private",
                                           show_progress="hidden")
        compare_event = compare_btn.click(
            compare, [question_box, last_question, mode_radio, tau_slider, max_tokens, temperature, seed],
            [compare_out, badge, p_bar, stats, error_box], api_visibility="private", show_progress="minimal")
        stop_btn.click(None, None, None, cancels=[ask_event, submit_event, compare_event], api_visibility="private")
        clear_btn.click(lambda: ([], "", badge_html(None, "idle"), p_think_html(None), stats_html(), error_html(None),
                                 compare_html(None), ""), None,
                        [chatbot, question_box, badge, p_bar, stats, error_box, compare_out, last_question],
                        api_visibility="private", queue=False)
        mode_radio.change(on_mode, mode_radio, tau_slider, api_visibility="private", queue=False)
        load_btn.click(load_model_choice, model_dd, [model_info, error_box], api_visibility="private")
        gr.api(api_answer, api_name="answer")
    demo.queue(default_concurrency_limit=demo_cfg.concurrency_limit)
    return demo


def launch_kwargs(demo_cfg: DemoConfig, host: str | None = None, port: int | None = None,
                  share: bool | None = None) -> dict:
    """Keyword arguments for ``demo.launch``: local-only and no public link unless asked."""
    return {"server_name": host or demo_cfg.host, "server_port": int(port or demo_cfg.port),
            "share": bool(demo_cfg.share if share is None else share), "theme": theme(),
            "ssr_mode": False, "show_error": True, "footer_links": ["api"],
            "css": "#tl-side { gap: 10px !important; }"}


def theme():
    return gr.themes.Soft(primary_hue="violet", secondary_hue="emerald", neutral_hue="slate")


def default_model_choices() -> dict[str, str]:
    """Every shipped recipe (name -> file) for the picker."""
    from thinkless_lite.config import recipes_dir

    return {p.stem: str(p) for p in sorted(recipes_dir().glob("*.yaml"))}


def main(cfg: RunConfig, adapter_path: str | None = None, host: str | None = None, port: int | None = None,
         share: bool | None = None, model_choices: dict[str, str] | None = None):
    """Load the model once and serve the demo (blocks until interrupted)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    engine = ThinklessEngine.from_config(cfg, adapter_path=adapter_path)
    demo = build_app(engine, cfg.demo, model_choices if model_choices is not None else default_model_choices())
    kwargs = launch_kwargs(cfg.demo, host, port, share)
    if kwargs["server_name"] not in ("127.0.0.1", "localhost"):
        log.warning("binding %s: the demo is reachable from your network", kwargs["server_name"])
    if kwargs["share"]:
        log.warning("share=True: creating a public gradio.live link to this demo")
    return launch(demo, cfg.demo, host, port, share)


def launch(demo: gr.Blocks, demo_cfg: DemoConfig, host: str | None = None, port: int | None = None,
           share: bool | None = None, **extra):
    """``demo.launch`` with the demo's safe defaults, theme and CSS; ``extra`` goes to ``launch`` as is."""
    return demo.launch(**(launch_kwargs(demo_cfg, host, port, share) | extra))


def _parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="run recipe (YAML); default: the built-in defaults")
    parser.add_argument("--adapter", help="LoRA adapter folder to load on top of the base")
    parser.add_argument("--host", help="bind address (default 127.0.0.1)")
    parser.add_argument("--port", type=int)
    parser.add_argument("--share", action="store_true", default=None, help="create a public gradio.live link")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. model.backend=hf demo.max_new_tokens=128")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = _parse_args()
    main(load_config(args.config, args.overrides), adapter_path=args.adapter, host=args.host, port=args.port,
         share=args.share)
