"""The demo page's status panels as HTML: the mode badge, the P(think) bar, the answer's cost, errors and the
compare table, with the CSS they carry. Pure strings; the browser tests read their ``data-*`` attributes."""

from __future__ import annotations

import html

from thinkless_lite.tokens import SHORT, THINK


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


def esc(value) -> str:
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
    asked = "" if question is None else f' data-question="{esc(question)}"'
    asked += "" if answer is None else f' data-answer="{esc(answer)}"'
    return (f'<div class="tl-card" id="gen-stats-value" data-state="{state}" data-tokens="{esc(tokens)}"{asked}>'
            f'<div class="tl-label">{label}</div>'
            f'<div class="tl-stats"><div class="tl-stat"><b>{tokens}</b><span>tokens generated</span></div>'
            f'<div class="tl-stat"><b>{secs}</b><span>seconds</span></div>'
            f'<div class="tl-stat"><b style="font-size:1rem">{esc(requested)}</b><span>requested</span></div></div></div>')


def error_html(message: str | None) -> str:
    return "" if not message else f'<div class="tl-error" role="alert">⚠ {esc(message)}</div>'


def compare_html(result: dict | None, pending: str | None = None) -> str:
    if pending:
        return f'<div class="tl-card tl-compare"><div class="tl-label">Compare</div><span class="tl-muted">{esc(pending)}</span></div>'
    if not result:
        return ('<div class="tl-card tl-compare"><div class="tl-label">Compare</div><span class="tl-muted">'
                'Press <b>Compare</b> to answer the question again with forced thinking and see how many '
                'tokens the model\'s own choice saved.</span></div>')
    chosen, think = result["chosen"], result["think"]

    def row(label, g):
        text = g.answer if g.answer else "(none)"
        answer = esc(text if len(text) <= 40 else text[:39] + "…")
        return (f'<tr><td>{label}</td><td><span class="tl-badge" style="font-size:.8rem;padding:2px 10px" '
                f'data-mode="{g.mode or "none"}">{esc(g.mode or "none")}</span></td>'
                f'<td class="num">{g.num_tokens}</td><td class="num">{g.seconds:.2f}</td><td class="ans" '
                f'title="{esc(text)}">{answer}</td></tr>')

    saved = result["tokens_saved"]
    if chosen.mode is None:
        verdict = (f"The model chose no mode (a format error); its answer used <b>{abs(saved)}</b> tokens "
                   f"{'fewer' if saved >= 0 else 'more'} than forced thinking.")
    elif saved > 0:
        verdict = f'Choosing <b>{esc(chosen.mode)}</b> saved <b>{saved}</b> tokens ({result["saved_fraction"]:.0%}).'
    elif saved == 0 and chosen.mode == THINK:
        verdict = "No tokens saved: the model chose to think here too."
    elif saved == 0:
        verdict = "No tokens saved: both answers are equally long."
    else:
        verdict = f"The chosen answer was <b>{-saved}</b> tokens longer than forced thinking."
    same = "same answer" if result["same_answer"] else "different answers"
    return (f'<div class="tl-card tl-compare" id="compare-value" data-saved="{saved}"><div class="tl-label">'
            f'Compare · {esc(result["question"])}</div><table><tr><th></th><th>mode</th><th>tokens</th><th>sec</th>'
            f'<th>answer</th></tr>{row("chosen", chosen)}{row("forced think", think)}</table>'
            f'<div class="tl-saved">{verdict} <span class="tl-muted">({same})</span></div></div>')
