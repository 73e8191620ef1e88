import json

from corll.service.export import rows, to_dataset, write_jsonl
from corll.store import Principal, Store

WHO = Principal("acme", "alice")
CHAT = [{"role": "user", "content": "Write a tagline."}]


def logged(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'x.db'}")
    a = store.record_interaction(WHO, CHAT, "A product.", policy_version_id=None, sampling={}, response_logprob=None)
    b = store.record_interaction(WHO, CHAT, "Same text.", policy_version_id=None, sampling={}, response_logprob=None)
    store.add_feedback(WHO, a, edit="A great product.")
    store.add_feedback(WHO, a, reaction="dislike")
    store.add_feedback(WHO, b, edit="Same text.")  # no change: no preference
    store.add_feedback(WHO, b, reaction="love")
    return store.feedback()


def test_every_format_holds_exactly_the_informative_feedback(tmp_path):
    records = logged(tmp_path)
    assert list(rows(records, "trl-preference")) == [
        {"prompt": CHAT, "chosen": [{"role": "assistant", "content": "A great product."}],
         "rejected": [{"role": "assistant", "content": "A product."}]}]
    assert [(r["completion"][0]["content"], r["label"]) for r in rows(records, "trl-kto")] == [
        ("A great product.", True), ("A product.", False), ("A product.", False), ("Same text.", True)]
    [dpo] = rows(records, "openai-dpo")
    assert dpo["input"]["messages"] == CHAT and dpo["preferred_output"][0]["content"] == "A great product."
    assert list(rows(records, "sft")) == [{"messages": [*CHAT, {"role": "assistant", "content": "A great product."}]}]


def test_jsonl_and_datasets_agree(tmp_path):
    records = logged(tmp_path)
    out = tmp_path / "prefs.jsonl"
    assert write_jsonl(records, "trl-preference", out) == 1
    assert [json.loads(line) for line in out.read_text().splitlines()] == list(rows(records, "trl-preference"))
    dataset = to_dataset(records, "trl-kto")
    assert dataset.num_rows == 4 and dataset.column_names == ["prompt", "completion", "label"]


def test_unknown_format_is_refused(tmp_path):
    import pytest

    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        list(rows(logged(tmp_path), "csv"))
