"""Dueling RLHF: two samples, the true reward labels them, ties give nothing, N pairs per DPO step."""

from __future__ import annotations

from corll.learners.dueling import Dueling
from corll.tasks import Task
from corll.users import DuelingLabeller
from tests.learners.test_corll import StepRecorder, counter


class TwoSamples:
    """Sample 0 is 'long answer' for even prompts and a tie ('same') for odd ones."""

    def sample(self, prompts, k):
        assert k == 2
        return [["same", "same"] if int(x[1:]) % 2 else ["short", "long answer"] for x in prompts]


def test_dueling_labels_by_the_true_reward_skips_ties_and_steps_on_n_pairs():
    task = Task("length", ["p"], ["p"], reward=lambda xs, ys: [float(len(y)) for y in ys], expert=None)
    learner = StepRecorder()
    log, stats = Dueling(TwoSamples(), learner, DuelingLabeller(task), batch_size=2).round(counter())
    assert [(p.prompt, p.chosen, p.rejected) for p in log.pairs] == [("p0", "long answer", "short"),
                                                                     ("p2", "long answer", "short")]
    assert log.skipped == 1 and log.queries == 3  # the tie of p1 made it ask one prompt more
    assert log.shown_rewards == [5.0, 11.0, 4.0, 4.0, 5.0, 11.0]  # R* of both responses of every duel
    assert learner.steps == [log.pairs] and stats == "step 1"
