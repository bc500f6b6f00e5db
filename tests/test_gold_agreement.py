"""The grader agrees with each benchmark's own gold solutions.

Grading a benchmark's reference solution against its reference answer must succeed: every row where
it does not is either a grader bug or a benchmark quirk, and both must be looked at. Disagreements
go to ``artifacts/gold_disagreements.json`` with a pattern-assigned explanation.
"""

import json
import re
from pathlib import Path

import pytest

from thinkless_lite.grading import extract_answer, grade_answer

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT.parent / "shared" / "data" / "benchmarks"
REPORT = ROOT / "artifacts" / "gold_disagreements.json"
MIN_AGREEMENT = 0.995

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"no benchmark copies at {BENCHMARKS}"),
]


def _jsonl(relative: str) -> list[dict]:
    with open(BENCHMARKS / relative, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _gsm8k() -> list[tuple[str, str, str]]:
    rows = _jsonl("gsm8k/test.jsonl")
    return [(f"gsm8k-test-{i}", row["answer"], row["answer"].split("####")[-1].strip().replace(",", ""))
            for i, row in enumerate(rows)]


def _math500() -> list[tuple[str, str, str]]:
    return [(row["unique_id"], row["solution"], row["answer"]) for row in _jsonl("math500/test.jsonl")]


def _minerva_algebra() -> list[tuple[str, str, str]]:
    return [(f"math-test-{row['math_test_idx']}", row["solution"], row["boxed_answer"])
            for row in _jsonl("minerva_algebra/test.jsonl")]


BENCHMARK_ROWS = {"gsm8k": (_gsm8k, 1319), "math500": (_math500, 500), "minerva_algebra": (_minerva_algebra, 1187)}


def explain(solution: str, extracted: str | None, gold: str) -> str:
    """A one-line category for a disagreement, assigned by pattern."""
    if extracted is None:
        return "solution has no extractable final answer"
    if solution.count("\\boxed") > 1:
        return "solution boxes several answers; only the last is read"
    if re.search(r"\\(?:text|mbox|mathrm)\{", gold) or re.search(r"\\(?:text|mbox|mathrm)\{", solution[-200:]):
        return "gold has units or words"
    if re.search(r"\d,\d{3}", gold):
        return "gold has thousands separators"
    if "matrix" in gold:
        return "matrix answer"
    if "\\cup" in gold or re.match(r"^[\[(].*[\])]$", gold.strip()):
        return "interval, tuple or union notation"
    if "=" in gold or "=" in extracted:
        return "equation on one side, value on the other"
    return "solution boxes an expression equivalent only after simplification"


def test_gold_solutions_agree_with_gold_answers():
    report, failures = {}, []
    for name, (load, expected_rows) in BENCHMARK_ROWS.items():
        rows = load()
        assert len(rows) == expected_rows, f"{name}: expected {expected_rows} rows, found {len(rows)}"
        disagreements = []
        for row_id, solution, gold in rows:
            if not grade_answer(solution, gold, timeout_s=10.0):
                extracted = extract_answer(solution)
                disagreements.append({"id": row_id, "extracted": extracted, "gold": gold,
                                      "explanation": explain(solution, extracted, gold)})
        agreement = 1 - len(disagreements) / len(rows)
        report[name] = {"rows": len(rows), "agreement": agreement, "disagreements": disagreements}
        print(f"{name}: agreement {agreement:.4f} ({len(rows) - len(disagreements)}/{len(rows)})")
        if agreement < MIN_AGREEMENT:
            failures.append(f"{name}: {agreement:.4f} < {MIN_AGREEMENT}")
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    REPORT.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    assert not failures, f"{failures}; see {REPORT}"


def test_explanations_by_pattern():
    assert explain("no answer", None, "5") == "solution has no extractable final answer"
    assert explain("\\boxed{1} or \\boxed{2}", "2", "1") == "solution boxes several answers; only the last is read"
    assert explain("\\boxed{5}", "5", "5\\text{ cm}") == "gold has units or words"
    assert explain("\\boxed{1600}", "1600", "1,600") == "gold has thousands separators"
    assert explain("\\boxed{(1,2)}", "(1,2)", "[1,2]") == "interval, tuple or union notation"
    assert explain("\\boxed{x=2}", "x=2", "2") == "equation on one side, value on the other"
    assert explain("\\boxed{2^{1/2}}", "2^{1/2}", "\\sqrt2") == \
        "solution boxes an expression equivalent only after simplification"
