"""The grader on model-style answers with known verdicts, built from every benchmark's own gold answers.

A benchmark's reference solution cannot serve as a model answer (grading GSM8K's solution against the number
after its own ``####`` only tests the extraction of that number). Instead each gold answer is rewritten the
ways models write a right answer (boxed, "The answer is ...", inside ``$...$``, a number with thousands
separators or a trailing ``.0``) and perturbed the ways they write a wrong one (off by one, a factor of ten,
the fraction upside down, twice the expression); the grader must accept every rewrite and reject every
perturbation. Misjudged cases go to ``artifacts/grader_verdicts.json``.
"""

import json
from fractions import Fraction
from pathlib import Path

import pytest

from thinkless_lite.data.golds import gsm8k_gold
from thinkless_lite.grading import _as_number, grade_answer, normalise_answer

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT.parent / "shared" / "data" / "benchmarks"
REPORT = ROOT / "artifacts" / "grader_verdicts.json"
MIN_AGREEMENT = {"right": 0.99, "wrong": 0.999}

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"no benchmark copies at {BENCHMARKS}")]


def _jsonl(relative: str) -> list[dict]:
    with open(BENCHMARKS / relative, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


GOLDS = {
    "gsm8k": lambda: [gsm8k_gold(row["answer"]) for row in _jsonl("gsm8k/test.jsonl")],
    "math500": lambda: [row["answer"] for row in _jsonl("math500/test.jsonl")],
    "minerva_algebra": lambda: [row["boxed_answer"] for row in _jsonl("minerva_algebra/test.jsonl")],
}


def _number_text(value: Fraction, like: str) -> str:
    """``value`` written the way ``like`` is (integer, decimal, or LaTeX fraction)."""
    if value.denominator == 1:
        return str(value.numerator)
    if "." in like:
        return f"{float(value):.6f}".rstrip("0")
    sign = "-" if value < 0 else ""
    return f"{sign}\\frac{{{abs(value.numerator)}}}{{{value.denominator}}}"


def right_answers(gold: str) -> list[str]:
    answers = [f"\\boxed{{{gold}}}", f"So the final answer is ${gold}$.", f"The answer is \\boxed{{{gold}}}."]
    value = _as_number(normalise_answer(gold))
    if value is not None and value.denominator == 1:
        n = value.numerator
        answers += [f"The answer is {n}.", f"#### {n}", f"{n}.0"]
        if abs(n) >= 1000:
            answers.append(f"The answer is {n:,}.")
    return answers


def wrong_answers(gold: str) -> list[str]:
    value = _as_number(normalise_answer(gold))
    if value is None:  # symbolic: twice the expression is a different answer unless it is zero
        return [] if normalise_answer(gold) in ("0", "") else [f"\\boxed{{2\\cdot\\left({gold}\\right)}}"]
    wrong = [value + 1] + ([value * 10] if value != 0 else [])
    if value.denominator != 1 and value.numerator not in (0, value.denominator):
        wrong.append(1 / value)
    answers = [f"The answer is \\boxed{{{_number_text(v, gold)}}}." for v in wrong]
    if value.denominator != 1 and "." not in gold:  # a fraction that agrees to six digits is still another fraction
        close = value + Fraction(1, 10**7 * value.denominator)
        answers.append(f"The answer is \\boxed{{\\frac{{{close.numerator}}}{{{close.denominator}}}}}.")
    return answers


def test_model_style_answers_are_judged_right_and_wrong_as_they_are():
    report, failures = {}, []
    for name, load in GOLDS.items():
        golds = [g for g in load() if g]
        misjudged = {"right": [], "wrong": []}
        counts = {"right": 0, "wrong": 0}
        for gold in golds:
            for verdict, answers in (("right", right_answers(gold)), ("wrong", wrong_answers(gold))):
                for answer in answers:
                    counts[verdict] += 1
                    if grade_answer(answer, gold, timeout_s=10.0) != (verdict == "right"):
                        misjudged[verdict].append({"gold": gold, "answer": answer})
        summary = {verdict: {"answers": counts[verdict], "agreement": 1 - len(misjudged[verdict]) / counts[verdict],
                             "misjudged": misjudged[verdict]} for verdict in counts}
        report[name] = summary
        print(f"{name}: {len(golds)} golds; right answers accepted {summary['right']['agreement']:.4f} "
              f"of {counts['right']}, wrong ones rejected {summary['wrong']['agreement']:.4f} of {counts['wrong']}")
        failures += [f"{name} {v}: {summary[v]['agreement']:.4f} < {MIN_AGREEMENT[v]}" for v in counts
                     if summary[v]["agreement"] < MIN_AGREEMENT[v]]
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert not failures, f"{failures}; see {REPORT}"


def test_the_rewrites_and_perturbations_are_what_they_claim():
    assert right_answers("1600")[-1] == "The answer is 1,600." and "1600.0" in right_answers("1600")
    assert wrong_answers("\\frac{3}{4}") == ["The answer is \\boxed{\\frac{7}{4}}.",
                                             "The answer is \\boxed{\\frac{15}{2}}.",
                                             "The answer is \\boxed{\\frac{4}{3}}.",
                                             "The answer is \\boxed{\\frac{30000001}{40000000}}."]
    assert wrong_answers("0.5")[0] == "The answer is \\boxed{1.5}."
    assert wrong_answers("0") == ["The answer is \\boxed{1}."]
    assert wrong_answers("x^2+1") == ["\\boxed{2\\cdot\\left(x^2+1\\right)}"]
