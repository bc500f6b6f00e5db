"""Gradio demo: watch a Thinkless model decide when to think.

UI only: every question goes through :class:`thinkless_lite.demo_engine.ThinklessEngine`. The page streams
the answer, shows the control token the model chose (``short`` / ``think``) the moment it is chosen,
P(think) as a bar, the reasoning in a collapsible "Thinking" message, and what the answer cost.

    thinkless-lite demo --config mini [--adapter runs/mini/rl/adapter] [--port 7860] [--share]

Safe defaults: binds 127.0.0.1, no public link unless ``--share``, a bounded queue, input length
limit. ``gradio_client`` can call ``Client(url).predict(question, mode, tau, api_name="/answer")``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Iterator

import gradio as gr

from thinkless_lite.config import DemoConfig, RunConfig, load_config
from thinkless_lite.demo.panels import CSS, badge_html, compare_html, error_html, esc, p_think_html, stats_html
from thinkless_lite.demo.render import render_answer
from thinkless_lite.demo_engine import ThinklessEngine
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
                    footer = (f"\n\n<sub>{esc(g.mode or 'no mode')} · {g.num_tokens} tokens · "
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


if __name__ == "__main__":  # `python demo/app.py --config mini ...`: the same as `thinkless-lite demo ...`
    import sys

    from thinkless_lite.cli import main as cli_main

    sys.exit(cli_main(["demo", *sys.argv[1:]]))
