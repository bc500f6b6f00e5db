"""Answer extraction and grading: formats, equivalences, safety in threads, bounded time, real rows."""

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from thinkless_lite import grading, symbolic
from thinkless_lite.grading import extract_answer, grade_answer

BENCHMARKS = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "benchmarks"
needs_benchmarks = pytest.mark.skipif(not BENCHMARKS.is_dir(), reason=f"no benchmark copies at {BENCHMARKS}")


def _jsonl(relative: str) -> list[dict]:
    with open(BENCHMARKS / relative, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _json(relative: str) -> list[dict]:
    with open(BENCHMARKS / relative, encoding="utf-8") as handle:
        return json.load(handle)


# --- extraction -----------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    # \boxed: the last one, balanced braces, \fbox, the space form, truncated boxes skipped
    ("First \\boxed{3}, then \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "(3,\\frac{\\pi}{2})"),
    ("so \\fbox{42}", "42"),
    ("\\boxed 7", "7"),
    ("\\boxed{5} and then \\boxed{6", "5"),
    ("\\boxed{x^{2}+1}", "x^{2}+1"),
    # GSM8K
    ("She pays 2*800=<<2*800=1600>>1600.\n#### 1,600", "1600"),
    ("#### -3", "-3"),
    # answer phrases
    ("The answer is $\\frac{1}{2}$.", "\\frac{1}{2}"),
    ("So the answer is 18 apples.", "18"),
    ("Answer: 3.5", "3.5"),
    ("FINAL ANSWER IS: **42**", "42"),
    ("the answer is \\$32,\\!348.", "32348"),
    # bare answers
    ("x = 5", "5"),
    ("(1,2)", "(1,2)"),
    ("[-2, 7)", "[-2,7)"),
    ("\\{1, 2\\}", "\\{1,2\\}"),
    ("\\pi r^2", "\\pi r^2"),
    ("\\text{(C)}", "(C)"),
    ("Evelyn", "Evelyn"),
    ("19 \\text{ and }43", "19and43"),
    # last-number fallback
    ("We get 12 cookies, then 15 more for 27 in total", "27"),
    ("5 - 3 leaves 2", "2"),
    ("the ratio is 3/4", "3/4"),
    ("it costs -7 dollars", "-7"),
    # normalisation
    ("\\boxed{025}", "25"),
    ("\\boxed{142.0}", "142"),
    ("\\boxed{0.50}", "0.5"),
    ("\\boxed{1,600}", "1600"),
    ("\\boxed{11,\\! 111,\\! 111,\\! 100}", "11111111100"),
    ("\\boxed{(1,600)}", "(1,600)"),
    ("\\boxed{5\\text{ cm}^2}", "5"),
    ("\\boxed{90^\\circ}", "90"),
    ("\\boxed{10\\%}", "10"),
    ("\\boxed{\\dfrac{3}{4}}", "\\frac{3}{4}"),
    ("\\boxed{$7$.}", "7"),
    ("\\boxed{y = 2x + 3}", "2x+3"),
    ("\\boxed{x \\le 3}", "x\\le3"),
    ("\\boxed{\\begin{pmatrix} 1 \\\\ -2 \\end{pmatrix}}", "\\begin{pmatrix}1\\\\-2\\end{pmatrix}"),
])
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize("text", [None, "", "   ", "I don't know.", "no digits here at all", 42, b"5"])
def test_extract_answer_none_when_there_is_no_answer(text):
    assert extract_answer(text) is None


# --- grading --------------------------------------------------------------------------------

@pytest.mark.parametrize("response, gold", [
    ("\\boxed{\\frac{1}{2}}", "0.5"),
    ("0.5", "\\frac{1}{2}"),
    ("\\frac12", "0.5"),
    ("1/2", "\\dfrac{1}{2}"),
    ("1,600", "1600"),
    ("The total is $1,600.", "1600"),
    ("025", "25"),
    ("142.0", "142"),
    ("0.333333", "\\frac{1}{3}"),
    ("[-2, 7)", "[-2,7)"),
    ("\\boxed{(-\\infty, 3]}", "(-\\infty,3]"),
    ("\\boxed{\\{2, 1\\}}", "\\{1,2\\}"),
    ("\\boxed{\\frac{\\sqrt3}{2}}", "\\dfrac{\\sqrt{3}}{2}"),
    ("\\boxed{2\\sqrt{2}}", "\\sqrt{8}"),
    ("x = 5", "5"),
    ("\\boxed{10\\%}", "10"),
    ("the answer is \\text{(C)}", "\\text{(C)}"),
    ("#### 18", "18"),
    ("\\boxed{-2 + 7i}", "-2+7i"),
])
def test_equivalent_answers(response, gold):
    assert grade_answer(response, gold)


@pytest.mark.parametrize("response, gold", [
    ("\\boxed{3}", "4"),
    ("0.33", "\\frac{1}{3}"),
    ("12345679", "12345678"),
    ("(1,2)", "[1,2]"),
    ("\\boxed{\\sqrt{5}}", "2"),
    ("\\boxed{\\frac{1}{3}}", "0.5"),
    ("1,2", "12"),
    ("I don't know", "5"),
])
def test_wrong_answers(response, gold):
    assert not grade_answer(response, gold)


@pytest.mark.parametrize("response, gold", [
    (None, "5"), ("5", None), (None, None), (5, "5"), ("5", 5), ("", ""), ("\\boxed{", "}"),
    ("\\boxed{" * 2000, "1"), ("{" * 5000 + "}" * 5000, "1"), ("9" * 50_000, "9"),
    ("\x00\x01\ud800", "\\frac{"), ("$" * 1000, "$"), ("\\boxed{\\frac{}{}}", "\\frac{}{}"),
])
def test_bad_input_never_raises(response, gold):
    assert grade_answer(response, gold, timeout_s=2.0) in (True, False)


def test_fast_path_decides_numbers_without_the_symbolic_worker(monkeypatch):
    def forbidden(*args):
        raise AssertionError("symbolic grading reached for a plain number")

    monkeypatch.setattr(grading, "symbolic_equal", forbidden)
    start = time.perf_counter()
    for _ in range(200):
        assert grade_answer("The answer is 7.", "7")
        assert not grade_answer("\\boxed{8}", "7")
        assert grade_answer("0.5", "\\frac{1}{2}")
        assert grade_answer("#### 1,600", "1600")
    assert time.perf_counter() - start < 2.0


def test_grading_from_many_threads():
    cases = [(f"\\boxed{{\\frac{{{i}}}{{2}}}}", f"{i / 2}") for i in range(1, 20)]
    cases += [(f"\\boxed{{\\sqrt{{{i * i}}}}}", str(i)) for i in range(2, 12)]
    cases += [(f"\\boxed{{{i + 1}}}", str(i)) for i in range(10)]
    expected = [True] * 29 + [False] * 10
    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda case: grade_answer(*case, timeout_s=20.0), cases))
    assert results == expected


def test_pathological_answers_time_out_and_the_worker_recovers():
    assert grade_answer("\\boxed{\\sqrt{4}}", "2")  # warm a worker: startup is not part of the deadline
    start = time.monotonic()
    assert not grade_answer("5", "9^{9^{9^{9^{9}}}}", timeout_s=1.0)
    assert time.monotonic() - start < 1.0 + 3.0
    assert grade_answer("\\boxed{\\sqrt{9}}", "3", timeout_s=20.0)  # a fresh worker takes over


def test_pathological_answer_from_a_thread_is_bounded_too():
    def hang():
        start = time.monotonic()
        verdict = grade_answer("\\boxed{9^{9^{9^{9^{9}}}}}", "7^{7^{7^{7^{7}}}}", timeout_s=1.0)
        return verdict, time.monotonic() - start

    with ThreadPoolExecutor(max_workers=1) as pool:
        verdict, elapsed = pool.submit(hang).result(timeout=60)
    assert verdict is False
    assert elapsed < symbolic.STARTUP_TIMEOUT_S  # startup (if any) + about timeout_s


# --- real benchmark rows --------------------------------------------------------------------

@needs_benchmarks
def test_gsm8k_rows():
    rows = _jsonl("gsm8k/test.jsonl")
    commas = [row for row in rows if "," in row["answer"].split("####")[-1]]
    negatives = [row for row in rows if row["answer"].split("####")[-1].strip().startswith("-")]
    assert len(commas) == 14 and len(negatives) == 2  # the README's quirks are really there
    for row in rows[:40] + commas + negatives:
        gold = row["answer"].split("####")[-1].strip()
        assert grade_answer(row["answer"], gold.replace(",", ""))
        assert grade_answer(row["answer"], gold)
        assert not grade_answer(row["answer"], str(int(gold.replace(",", "")) + 1))


@needs_benchmarks
def test_math500_rows():
    rows = _jsonl("math500/test.jsonl")
    by_answer = {row["answer"]: row for row in rows}
    for answer in ["\\left( 3, \\frac{\\pi}{2} \\right)", "\\dfrac{33}{100}", "5.4 \\text{ cents}",
                   "11,\\! 111,\\! 111,\\! 100", "90^\\circ"]:
        row = by_answer[answer]
        assert grade_answer(row["solution"], row["answer"])
    assert grade_answer("The answer is 0.33.", "\\dfrac{33}{100}")
    assert grade_answer("It costs 5.4 cents.", "5.4 \\text{ cents}")
    intervals = [row for row in rows if row["answer"].startswith(("(", "[")) and "\\infty" in row["answer"]]
    assert intervals
    for row in intervals:
        assert grade_answer(row["solution"], row["answer"])


@needs_benchmarks
def test_minerva_rows_graded_against_boxed_answer():
    rows = _jsonl("minerva_algebra/test.jsonl")
    for row in rows[:60]:
        assert grade_answer(row["solution"], row["boxed_answer"])
    dollars = next(row for row in rows if row["boxed_answer"].startswith("\\$"))
    assert grade_answer(dollars["answer"], dollars["boxed_answer"])


@needs_benchmarks
def test_aime_amc_and_deepscaler_golds():
    for row in _jsonl("aime2024/test.jsonl"):
        assert grade_answer(f"\\boxed{{{row['answer']}}}", row["answer"])
        assert grade_answer(f"The answer is {int(row['answer']):03d}.", row["answer"])
    amc = _json("amc/amc.json")
    for row in amc:
        assert grade_answer(f"\\boxed{{{row['answer']:g}}}", str(row["answer"]))  # 142.0 vs 142
    aime = _json("deepscaler_train/aime.json")
    padded = [row for row in aime if str(row["answer"]).startswith("0")]
    assert padded
    for row in padded:
        assert grade_answer(str(int(row["answer"])), row["answer"])  # "025" vs "25"
    math_rows = _json("deepscaler_train/math.json")
    nulls = [row for row in math_rows if row["answer"] is None]
    assert len(nulls) == 2
    assert all(grade_answer("\\boxed{1}", row["answer"]) is False for row in nulls)


@needs_benchmarks
def test_an_extracted_answer_is_itself_a_bare_answer():
    """grade_answer accepts bare answers, so extracting twice must change nothing on real golds."""
    golds = [row["answer"] for row in _jsonl("math500/test.jsonl")]
    golds += [row["boxed_answer"] for row in _jsonl("minerva_algebra/test.jsonl")]
    golds += [row["answer"] for row in _json("deepscaler_train/math.json") if row["answer"]]
    unstable = []
    for gold in golds:
        once = extract_answer(f"\\boxed{{{gold}}}")
        if extract_answer(once) != once or not grade_answer(once, gold):
            unstable.append((gold, once))
    assert not unstable


def test_two_different_fractions_are_never_close_enough():
    """Exact rationals compare exactly; the six-decimal rounding is for answers written as decimals."""
    assert not grade_answer("\\frac{5}{7}", "\\frac{714286}{1000001}")  # equal to six digits, not equal
    assert not grade_answer("The answer is 355/113.", "\\frac{710}{226.0001}")
    assert grade_answer("\\frac{2}{6}", "\\frac{1}{3}") and grade_answer("0.333333", "\\frac{1}{3}")
    assert grade_answer("0.7142857", "\\frac{5}{7}") and not grade_answer("0.71", "\\frac{5}{7}")
