"""The memo behind the reference's log π_0 values and the expert's R*."""

from corll.memo import Memo


def test_memo_computes_each_missing_distinct_key_once_in_one_call():
    calls: list[list[int]] = []

    def length(keys):
        def compute(todo):
            calls.append(todo)
            return [float(len(keys[i])) for i in todo]
        return compute

    memo = Memo(size=10)
    keys = ["a", "bb", "a", "ccc"]
    assert memo.get(keys, length(keys)) == [1.0, 2.0, 1.0, 3.0]
    assert calls == [[2, 1, 3]]  # "a" once (its last position), "bb", "ccc"
    assert memo.get(["bb", "dddd"], length(["bb", "dddd"])) == [2.0, 4.0]
    assert calls[-1] == [1]  # only "dddd" was unknown


def test_memo_forgets_its_oldest_values_only_after_answering():
    memo = Memo(size=2)
    assert memo.get(["a", "bb"], lambda todo: [1.0, 2.0]) == [1.0, 2.0]
    # "a" is the oldest kept and is asked for beside a new key: answered, then trimmed
    assert memo.get(["a", "ccc"], lambda todo: [3.0]) == [1.0, 3.0]
    assert list(memo) == ["bb", "ccc"]


def test_a_remembered_value_stays_the_value():
    memo = Memo(size=3)
    memo.remember(["a"], [1.0])
    memo.remember(["a", "b"], [9.0, 2.0])
    assert memo.get(["a", "b"], lambda todo: [0.0] * len(todo)) == [1.0, 2.0] and len(memo) == 2
