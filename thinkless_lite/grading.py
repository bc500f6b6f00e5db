"""Final-answer extraction and grading: the judge behind every reward and every accuracy number.

Two layers, because ``grade_answer`` runs thousands of times per RL step:

* a pure-Python fast path (normalised string equality, exact numeric equality) that settles
  the common case - integers, decimals, simple fractions - in microseconds;
* a symbolic fallback with math-verify (fractions vs decimals, intervals, sets, radicals) that
  runs in a killable child process (:mod:`thinkless_lite.symbolic` says why).

Nothing here raises: bad input of any kind grades as False.
"""

from __future__ import annotations

import logging
import re
from fractions import Fraction

from thinkless_lite.symbolic import symbolic_equal

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------

_BOX_RE = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
_GSM8K_RE = re.compile(r"####(?!#)\s*([^\n]*)")
_ANSWER_IS_RE = re.compile(r"\banswer\b\s*(?:is\b\s*:?|:)\s*", re.IGNORECASE)
_MATH_SEGMENT_RE = re.compile(r"\$+([^$]+)\$+|\\\((.+?)\\\)|\\\[(.+?)\\\]", re.DOTALL)
# A number: thousands-grouped or plain, optional decimals, optional "/denominator". A minus counts
# only when it is not a binary minus ("5-3" ends in 3, not -3).
_NUMBER_RE = re.compile(
    r"(?:(?<![\w)\]}])-)?(?:\d{1,3}(?:,\d{3})+(?![\d])|\d+)(?:\.\d+)?(?:/\d+)?|(?:(?<![\w)\]}])-)?\.\d+"
)
_PROSE_WORD_RE = re.compile(r"[A-Za-z]{2,}")
_SHORT_ENGLISH_WORDS = frozenset("am an as at be by do he if in is it me my no of on or so to up us we".split())
_LATEX_COMMAND_RE = re.compile(r"\\[A-Za-z]+")
_TEXT_WRAP = r"\\(?:text|textbf|textrm|mbox|mathrm|mathbf)\s*\{([^{}]*)\}"
_NON_PROSE_RE = re.compile(r"\\(?:begin|end)\{[A-Za-z*]*\}|" + _TEXT_WRAP)

_MAX_BOX_SCAN = 20_000  # characters scanned for a closing brace: truncated boxes cost O(this)
_MAX_BOXES_TRIED = 8  # unclosed boxes tried before giving up, so junk cannot cost O(n^2)
_MAX_ANSWER_CHARS = 10_000  # longer "answers" are junk; normalising them only costs time
_MAX_BARE_CHARS = 300  # longer text is prose, not a bare answer
_MAX_SYMBOLIC_CHARS = 1_000  # longer "answers" are not worth a sympy parse


def closing_brace(text: str, open_at: int, limit: int | None = None) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``open_at``; escaped ``\\{``/``\\}`` do not count.

    None when it never closes within ``limit`` characters. The one brace matcher: the grader, the
    benchmark golds and the demo's LaTeX rendering all use it.
    """
    depth, j = 0, open_at
    end = len(text) if limit is None else min(len(text), open_at + limit)
    while j < end:
        ch = text[j]
        if ch == "\\":
            j += 2  # an escaped character (\{, \}, \\)
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return j
        j += 1
    return None


def last_boxed(text) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` (or ``\\boxed 5``), stripped;
    None when there is none or its braces never close."""
    if text is None:
        return None
    text = str(text)
    for match in list(_BOX_RE.finditer(text))[-_MAX_BOXES_TRIED:][::-1]:
        i = match.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            close = closing_brace(text, i, _MAX_BOX_SCAN)
            if close is not None:
                return text[i + 1:close].strip()
        elif i > match.end():  # "\boxed 5": the token after the space
            token = re.match(r"[^\s$]+", text[i:])
            if token:
                return token.group(0)
    return None


def _after_answer_phrase(text: str) -> str | None:
    """The X in the last "the answer is X" / "answer: X", cut to its sentence."""
    matches = list(_ANSWER_IS_RE.finditer(text))
    if not matches:
        return None
    tail = text[matches[-1].end():][:_MAX_BARE_CHARS * 5]
    tail = tail.split("\n", 1)[0].replace("\\$", "")  # "\$5" is a currency sign, not maths mode
    tail = re.split(r"\.(?:\s|$)", tail, maxsplit=1)[0]
    math = _MATH_SEGMENT_RE.search(tail)
    if math:
        return next(group for group in math.groups() if group is not None)
    if _reads_as_prose(tail):
        # Prose after the phrase ("18 apples", "5 because ..."): keep its first number if any.
        number = _NUMBER_RE.search(tail)
        return number.group(0) if number else None
    return tail if tail.strip() else None


def _reads_as_prose(text: str) -> bool:
    """A word of three letters or more, or a short English word, outside LaTeX commands,
    environment names and ``\\text{}`` ("so it is 5" is prose; ``ab + bc``, ``AB=9, CD=4`` are not)."""
    words = _PROSE_WORD_RE.findall(_LATEX_COMMAND_RE.sub(" ", _NON_PROSE_RE.sub(" ", text)))
    return any(len(word) >= 3 or word.lower() in _SHORT_ENGLISH_WORDS for word in words)


def is_bare_answer(text: str) -> bool:
    """Whether the whole text is itself an answer and nothing more (``\\frac{1}{2}``, ``x = 5``, ``Evelyn``).

    A single token always is (spaces after LaTeX commands, as in ``\\pi r``, do not split one);
    a longer line is, unless it reads as prose.
    """
    t = text.strip()
    if not t or "\n" in t or len(t) > _MAX_BARE_CHARS:
        return False
    if not re.search(r"\s", re.sub(r"(\\[A-Za-z]+)\s+", r"\1", t)):
        return True
    return not _reads_as_prose(t)


def extract_answer(text: str | None) -> str | None:
    """The normalised final answer in free text, or None when there is none.

    Priority: last ``\\boxed{}`` / ``\\fbox{}``, GSM8K ``#### N``, "the answer is X" /
    "answer: X", the whole text when it is a bare answer, and finally the last number.
    """
    try:
        if not isinstance(text, str) or not text.strip():
            return None
        candidates = []
        if "\\boxed" in text or "\\fbox" in text:
            candidates.append(last_boxed(text))
        if "####" in text:
            gsm = list(_GSM8K_RE.finditer(text))
            candidates.append(gsm[-1].group(1) if gsm else None)
        candidates.append(_after_answer_phrase(text))
        if is_bare_answer(text):
            candidates.append(text)
        for candidate in candidates:
            if candidate is not None and len(candidate) <= _MAX_ANSWER_CHARS:
                answer = normalise_answer(candidate)
                if answer:
                    return answer
        numbers = _NUMBER_RE.findall(text)
        return normalise_answer(numbers[-1]) if numbers and len(numbers[-1]) <= _MAX_ANSWER_CHARS else None
    except Exception:  # noqa: BLE001 - extraction must never take a training step down
        logger.debug("extract_answer failed", exc_info=True)
        return None


# ---------------------------------------------------------------------------------------------
# Normalisation
# ---------------------------------------------------------------------------------------------

_TRAILING_UNIT_RE = re.compile(r"(?<=\S)\s*" + _TEXT_WRAP + r"(?:\^\{?\d\}?)?\s*$")
_TEXT_RE = re.compile(_TEXT_WRAP)
_DEGREES_RE = re.compile(r"\^\s*\{?\s*\\circ\s*\}?|°|\\circ\b|\\degree\b")
_SPACING_RE = re.compile(r"(?<!\\)\\(?:[!,;: ]|left\b|right\b|displaystyle\b)")
_LEADING_VARIABLE_RE = re.compile(r"^(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*")
_THOUSANDS_RE = re.compile(r"-?\d{1,3}(?:,\d{3})+(?:\.\d+)?")
# Whitespace goes, except one space after a command followed by a letter ("\\pi r", not "\\pir").
_WHITESPACE_RE = re.compile(r"(\\[A-Za-z]+)\s+(?=[A-Za-z])|\s+")
_DECIMAL_RE = re.compile(r"(-?)(\d*)\.(\d+)|(-?)(\d+)\.")


def normalise_answer(answer: str | None) -> str:
    """Canonical text of an answer, so that ``1,600``, ``1600.``, ``$1600$`` compare equal.

    Strips dollars, ``\\text{}`` units, degree marks, LaTeX spacing, a leading ``x =``,
    thousands separators (only when the whole answer is one number, so ``(1,2)`` survives),
    leading zeros and integral decimals (``025`` -> ``25``, ``142.0`` -> ``142``).
    Whitespace is removed except where LaTeX needs it (``\\pi r``). Idempotent: one pass can
    expose more to strip (``\\text{\\text{5}}``), so passes repeat until nothing changes.
    """
    if not isinstance(answer, str):
        return ""
    s = answer
    for _ in range(8):
        previous, s = s, _normalise_once(s)
        if s == previous:
            break
    return s


def _normalise_once(s: str) -> str:
    s = s.strip().replace("\u2212", "-").replace("**", "")
    s = s.replace("\\$", "").replace("$", "").replace("\\(", "").replace("\\)", "")
    s = re.sub(r"^\\\[|\\\]$", "", s.strip())
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("{,}", ",")
    s = _SPACING_RE.sub(" ", s)
    s = _DEGREES_RE.sub("", s)
    s = re.sub(r"(?:\\?%\s*)+$", "", s.strip())
    s = _TRAILING_UNIT_RE.sub("", s)  # "5\text{ cm}" -> "5"
    s = _TEXT_RE.sub(r"\1", s)
    s = s.strip().rstrip(".").strip()
    if s.count("=") == 1 and not re.search(r"[<>]|\\[lgn]eq?\b", s):
        stripped = _LEADING_VARIABLE_RE.sub("", s)
        s = stripped if stripped.strip() else s
    s = _WHITESPACE_RE.sub(lambda m: m.group(1) + " " if m.group(1) else "", s)
    s = s.rstrip(".")
    if _THOUSANDS_RE.fullmatch(s):
        s = s.replace(",", "")
    return _canonical_number(s)


def _canonical_number(s: str) -> str:
    """``025`` -> ``25``, ``142.0`` -> ``142``, ``0.50`` -> ``0.5``, ``-0`` -> ``0``; else unchanged."""
    if re.fullmatch(r"-?\d+", s) and len(s) < 4000:
        return str(int(s))
    decimal = _DECIMAL_RE.fullmatch(s)
    if decimal and len(s) < 4000:
        if decimal.group(5) is not None:  # "5."
            return str(int(decimal.group(4) + decimal.group(5)))
        sign, whole, frac = decimal.group(1), decimal.group(2) or "0", decimal.group(3).rstrip("0")
        whole = str(int(whole))
        if not frac:
            return str(int(sign + whole))
        return f"{sign}{whole}.{frac}"
    return s


# ---------------------------------------------------------------------------------------------
# Fast path
# ---------------------------------------------------------------------------------------------

_PLAIN_NUMBER_RE = re.compile(r"-?(?:\d+\.?\d*|\.\d+)")
_FRAC_RE = re.compile(r"(-?)\\frac\{(-?\d+)\}\{(-?\d+)\}|(-?)\\frac(\d)(\d)")
_SLASH_RE = re.compile(r"(-?\d+)/(\d+)")


def _as_number(s: str) -> Fraction | None:
    """An exact value for plain numbers and simple fractions, None for anything symbolic."""
    if len(s) > 60:
        return None
    try:
        if _PLAIN_NUMBER_RE.fullmatch(s):
            return Fraction(s)
        slash = _SLASH_RE.fullmatch(s)
        if slash:
            return Fraction(int(slash.group(1)), int(slash.group(2)))
        frac = _FRAC_RE.fullmatch(s)
        if frac:
            sign, num, den = (frac.group(1), frac.group(2), frac.group(3)) if frac.group(2) else \
                (frac.group(4), frac.group(5), frac.group(6))
            value = Fraction(int(num), int(den))
            return -value if sign else value
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _numbers_equal(a: Fraction, b: Fraction, a_text: str, b_text: str) -> bool:
    """Exact for integers and fractions; to six decimals when a side is written as a decimal
    (math-verify's rounding: ``0.333333`` for ``1/3``). Two fractions are never "close enough":
    ``\\frac{5}{7}`` and ``\\frac{714286}{1000001}`` agree to six digits but are different answers."""
    if a == b:
        return True
    if not (_is_decimal(a_text) or _is_decimal(b_text)):
        return False
    return round(a, 6) == round(b, 6)


def _is_decimal(text: str) -> bool:
    return "." in text and bool(_PLAIN_NUMBER_RE.fullmatch(text))


def _gold_answer(gold: str) -> str:
    """Golds are bare answers; a gold that is a whole solution is read like a response."""
    if "\\boxed" in gold or "\\fbox" in gold or "####" in gold:
        return extract_answer(gold) or ""
    return normalise_answer(gold)


def grade_answer(response: str | None, gold: str | None, timeout_s: float = 5.0) -> bool:
    """Whether the final answer in ``response`` (free text or a bare answer) equals ``gold``.

    Settles numbers and exact matches without leaving the thread; anything symbolic goes to a
    math-verify child process with a deadline of ``timeout_s``. Never raises; False on doubt.
    """
    try:
        if not isinstance(response, str) or not isinstance(gold, str):
            return False
        pred = extract_answer(response)
        target = _gold_answer(gold)
        if not pred or not target:
            return False
        if pred == target:
            return True
        pred_value, target_value = _as_number(pred), _as_number(target)
        if pred_value is not None and target_value is not None:
            return _numbers_equal(pred_value, target_value, pred, target)
        if len(pred) > _MAX_SYMBOLIC_CHARS or len(target) > _MAX_SYMBOLIC_CHARS:
            return False
        return symbolic_equal(pred, target, timeout_s)
    except Exception:  # noqa: BLE001 - a grader bug must cost one reward, not a training run
        logger.warning("grade_answer failed; grading as wrong", exc_info=True)
        return False
