"""The deployment comparison page: per-run effects, Holm over the page, and pooling by user and run."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "deployment_compare.py"
spec = importlib.util.spec_from_file_location("deployment_compare", SCRIPT)
deployment_compare = importlib.util.module_from_spec(spec)
spec.loader.exec_module(deployment_compare)


def run(seed: int, static: dict[str, list[int]], learning: dict[str, list[int]], decisions=()) -> dict:
    """A results file as `experiments/deployment.py` writes it; learned versions serve from draft 2 on."""
    def rows(costs, learned):
        return [{"user": u, "t": t, "cost": c, "version": 1 if learned and t >= 2 else None}
                for u, cs in costs.items() for t, c in enumerate(cs)]
    return {"settings": {"seed": seed, "drafts": len(next(iter(static.values())))},
            "static": {"rows": rows(static, False), "wall_s": 60.0},
            "learning": {"rows": rows(learning, True), "decisions": list(decisions), "wall_s": 120.0}}


STATIC = {"ana": [4, 4, 4, 4, 4, 4], "ben": [9, 9, 9, 9, 9, 9]}
LEARNING = {"ana": [4, 4, 3, 2, 2, 1], "ben": [9, 9, 9, 8, 7, 6]}


def test_a_run_is_summarised_per_draft_per_window_and_per_user():
    rejected = {"user": "ben", "decision": "rejected", "reason": "monitor: KL"}
    s = deployment_compare.summarise_run(run(0, STATIC, LEARNING, [rejected, {"user": "ana", "decision": "promoted"}]))
    assert s["total"] == {"static": 78, "learning": 64}
    assert s["all"]["mean"] == pytest.approx(14 / 12) and s["all"]["n"] == 12
    # the last third of 6 drafts is drafts 4 and 5: differences 2, 3 (ana) and 2, 3 (ben)
    assert s["last_third"]["mean"] == pytest.approx(2.5) and s["last_third"]["n"] == 4
    assert s["per_user"]["ana"]["first_learned_draft"] == 2
    assert s["per_user"]["ben"]["rejections"] == ["monitor: KL"] and s["promoted"] == 1 and s["rejected"] == 1
    assert s["all"]["mde"] > 0


def test_holm_runs_over_every_per_run_test_on_the_page():
    report = deployment_compare.compare({"a": run(0, STATIC, LEARNING), "b": run(1, STATIC, STATIC | {"ana": [4, 4, 4, 4, 4, 3]})}, [])
    ps = sorted((report["runs"][r][w]["p"], report["runs"][r][w]["p_holm"]) for r in "ab" for w in ("all", "last_third"))
    assert report["tests"] == 4
    assert ps[0][1] == pytest.approx(min(1.0, 4 * ps[0][0]))
    assert all(adjusted >= raw for raw, adjusted in ps)


def test_pooling_takes_each_user_in_each_run_as_one_observation_and_refuses_shared_traffic():
    runs = {"a": run(0, STATIC, LEARNING), "b": run(1, STATIC, STATIC)}
    pooled = deployment_compare.pool(runs)
    # per-user mean differences: ana 7/6 and ben 7/6 in run a, 0 and 0 in run b
    assert pooled["all"]["per_user_and_run"]["mean"] == pytest.approx(7 / 12)
    assert pooled["all"]["per_user_and_run"]["n"] == 4 and pooled["all"]["per_draft"]["n"] == 24
    with pytest.raises(ValueError, match="different traffic seeds"):
        deployment_compare.pool({"a": run(0, STATIC, LEARNING), "b": run(0, STATIC, STATIC)})


def test_the_command_writes_the_page_and_rejects_an_unknown_pooled_run(tmp_path, monkeypatch, capsys):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(run(0, STATIC, LEARNING)))
    out = tmp_path / "runs"
    monkeypatch.setattr(sys, "argv", ["deployment_compare.py", "--run", f"0={path}", "--out", str(out)])
    deployment_compare.main()
    assert "78 → 64" in out.with_suffix(".md").read_text()
    monkeypatch.setattr(sys, "argv", ["deployment_compare.py", "--run", f"0={path}", "--pool", "0,9",
                                      "--out", str(tmp_path / "x")])
    with pytest.raises(SystemExit) as exit_:
        deployment_compare.main()
    assert exit_.value.code == 2 and not (tmp_path / "x.md").exists()
    assert "not given with --run: 9" in capsys.readouterr().err


def test_each_promoted_version_is_credited_with_the_words_it_saved_on_the_drafts_it_served():
    promoted = [{"user": "ana", "version": 1, "decision": "promoted", "margin_gain": 12.0},
                {"user": "ben", "version": 1, "decision": "rejected", "margin_gain": 30.0}]
    versions = deployment_compare.promotions({"a": run(0, STATIC, LEARNING, promoted)})["versions"]
    # ana's version 1 wrote her drafts 2..5: 4-3, 4-2, 4-2, 4-1; the rejected one is not listed
    assert versions == [{"run": "a", "user": "ana", "version": 1, "margin_gain": 12.0, "drafts_served": 4,
                         "saved_per_draft": pytest.approx(2.0)}]


def test_the_tables_replace_only_the_marked_part_of_a_page(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(run(0, STATIC, LEARNING)))
    page = tmp_path / "page.md"
    page.write_text(f"# Intro\n{deployment_compare.BEGIN}\nstale table\n{deployment_compare.END}\nThe rest.\n")
    argv = ["deployment_compare.py", "--run", f"0={path}", "--out", str(tmp_path / "runs"), "--into", str(page)]
    monkeypatch.setattr(sys, "argv", argv)
    deployment_compare.main()
    text = page.read_text()
    assert text.startswith("# Intro\n") and text.endswith(f"{deployment_compare.END}\nThe rest.\n")
    assert "stale table" not in text and "78 → 64" in text
    deployment_compare.main()  # again: the same page, not a second copy
    assert page.read_text() == text
    page.write_text("# no markers\n")
    with pytest.raises(SystemExit):
        deployment_compare.main()
    assert page.read_text() == "# no markers\n"
