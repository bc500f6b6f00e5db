"""Answer text prepared for the demo page: Markdown with LaTeX, without Markdown eating the maths."""

from __future__ import annotations

import re

from thinkless_lite.grading import closing_brace

_DISPLAY_BRACKETS = re.compile(r"\\\[(.+?)\\\]", re.DOTALL)
_INLINE_PARENS = re.compile(r"\\\((.+?)\\\)", re.DOTALL)
# Math already delimited: $$..$$ first, then $..$ (not across blank lines).
_MATH_SEGMENT = re.compile(r"\$\$.+?\$\$|(?<!\\)\$(?!\s)[^$\n]+?(?<![\s\\])\$", re.DOTALL)
_BARE_COMMAND = re.compile(r"\\(boxed|frac|dfrac|sqrt|cdot|times)\b")
# An arithmetic star (2*4, x*(y)) that Markdown would read as emphasis; **bold** is left alone.
_ARITHMETIC_STAR = re.compile(r"(?<=[0-9A-Za-z)\]])\*(?=[0-9A-Za-z(\[])")


def _balanced_end(text: str, start: int) -> int:
    """Index just past the ``{...}`` group(s) following a LaTeX command that ends at ``start``."""
    pos = start
    while pos < len(text) and text[pos] == "{":
        close = closing_brace(text, pos)
        if close is None:
            return len(text)
        pos = close + 1
    return pos


def _escape_stars(plain: str) -> str:
    return _ARITHMETIC_STAR.sub(r"\\*", plain)


def _wrap_bare_latex(plain: str) -> str:
    """Wrap LaTeX commands outside any math delimiters (``\\boxed{42}``) in ``$...$``; escape arithmetic stars."""
    out, pos = [], 0
    for match in _BARE_COMMAND.finditer(plain):
        if match.start() < pos:
            continue
        end = _balanced_end(plain, match.end())
        out.append(_escape_stars(plain[pos:match.start()]))
        out.append(f"${plain[match.start():end]}$")
        pos = end
    out.append(_escape_stars(plain[pos:]))
    return "".join(out)


def render_answer(text: str | None) -> str:
    """Answer text prepared for Markdown with LaTeX rendering.

    ``\\[..\\]`` becomes ``$$..$$`` and ``\\(..\\)`` becomes ``$..$`` (Markdown would otherwise eat the
    backslashes before KaTeX sees them); LaTeX commands left outside any delimiters, such as a bare
    ``\\boxed{3}``, are wrapped in ``$..$``; a multiplication star outside math (``3*2``) is escaped so
    Markdown does not read it as emphasis. Plain text (``7``) passes through unchanged. Pair it with
    a renderer whose LaTeX delimiters include ``$`` and ``$$`` (the demo's Chatbot has both).
    """
    if not text:
        return ""
    text = str(text).strip()
    text = _DISPLAY_BRACKETS.sub(lambda m: f"$${m.group(1).strip()}$$", text)
    text = _INLINE_PARENS.sub(lambda m: f"${m.group(1).strip()}$", text)
    pieces, pos = [], 0
    for match in _MATH_SEGMENT.finditer(text):
        pieces.append(_wrap_bare_latex(text[pos:match.start()]))
        pieces.append(match.group(0))
        pos = match.end()
    pieces.append(_wrap_bare_latex(text[pos:]))
    return "".join(pieces)
