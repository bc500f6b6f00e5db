import pytest

from thinkless_lite.data.miniworld import (PLACES, MiniWorld, benchmark_items, long_solution, short_solution,
                                           solve, split_of)


def test_left_to_right_mod_10():
    assert solve("7+3*2-5") == 5          # (7+3)=0, 0*2=0, 0-5=5
    assert solve("9*9") == 1 and solve("0-1") == 9
    reasoning, answer = long_solution("7+3*2-5")
    assert answer == "5" and "7+3=0\n0*2=0\n0-5=5\n" in reasoning and "7+3*2-5" in reasoning
    assert short_solution("2+2") == "2+2=4"
    with pytest.raises(ValueError):
        solve("7+")


def test_deterministic_by_seed():
    a = MiniWorld(seed=3).sample("train", 50)
    assert a == MiniWorld(seed=3).sample("train", 50)
    assert a != MiniWorld(seed=4).sample("train", 50)


def test_train_and_test_never_overlap():
    world = MiniWorld()
    train = {i.question for i in world.sample("train", 3000)}
    test = {i.question for i in world.sample("test", 1000)}
    assert not train & test
    assert all(split_of(q, world.test_fraction) == "train" for q in train)


def test_difficulty_mix_and_levels():
    world = MiniWorld(difficulty_weights={1: 1.0, 5: 1.0})
    items = world.sample("train", 400)
    assert {i.difficulty for i in items} == {1, 5}
    assert all(len(i.question) == 2 * i.difficulty + 1 for i in items)
    assert all(i.gold == str(solve(i.question)) for i in items)


def test_benchmark_items_cover_every_level():
    items = benchmark_items(per_level=10)
    assert len(items) == 80 and {i.difficulty for i in items} == set(range(1, 9))
    assert len(benchmark_items(limit=5)) == 5


@pytest.mark.parametrize("kwargs", [{"difficulty_weights": {}}, {"difficulty_weights": {0: 1.0}},
                                    {"test_fraction": 1.5}])
def test_bad_settings(kwargs):
    with pytest.raises(ValueError):
        MiniWorld(**kwargs)


def test_the_addition_task_is_exact_and_split_by_question():
    world = MiniWorld(difficulty_weights={1: 1, 2: 1, 3: 1, 4: 1}, task="addition")
    items = world.sample("train", 200, difficulties=[1, 2, 3, 4])
    for item in items:
        a, b = (int(x) for x in item.question.removeprefix("What is ").removesuffix("?").split(" + "))
        assert len(str(a)) == len(str(b)) == item.difficulty or item.difficulty == 1
        assert item.gold == str(a + b) == str(world.solve(item.question))
        reasoning, answer = world.long_solution(item.question)
        assert answer == item.gold and reasoning.endswith(f"So the answer is {a + b}.\n")
        lines = reasoning.splitlines()
        assert len(lines) == 2 + item.difficulty + (len(item.gold) > item.difficulty) + 1  # two numbers, a line per place
        assert lines[0] == f"{a} = " + " + ".join(f"{d} {PLACES[i]}" for i, d in reversed(list(enumerate(str(a)[::-1]))))
        assert lines[2].startswith(f"ones: {a % 10}+{b % 10}+0 = {a % 10 + b % 10}, write {(a + b) % 10}, carry ")
        assert world.short_solution(item.question) == f"{a} + {b} = {a + b}"
    uneven, _ = world.long_solution("What is 1 + 999?")   # a user's question: the carry leads at the widest place
    assert uneven.splitlines()[-2:] == ["thousands: write the carry 1", "So the answer is 1000."]
    test = {i.question for i in world.sample("test", 200, difficulties=[1, 2, 3, 4])}
    assert test.isdisjoint(i.question for i in items)
    with pytest.raises(ValueError, match="task must be one of"):
        MiniWorld(task="sorting")


def test_benchmark_questions_are_distinct_even_on_small_levels():
    items = benchmark_items(per_level=40)
    k1 = [i.question for i in items if i.difficulty == 1]
    assert len(k1) == len(set(k1)) == 40
    assert len({i.id for i in items}) == len(items)
    tiny = MiniWorld(difficulty_weights={1: 1, 2: 1}, task="addition")   # 100 one-digit sums, ~20 held out
    small = [i.question for i in benchmark_items(per_level=40, world=tiny) if i.difficulty == 1]
    assert 0 < len(small) < 40 and len(small) == len(set(small))
    assert all(split_of(q, tiny.test_fraction) == "test" for q in small)
    assert benchmark_items(per_level=40) == items   # deterministic
