from corll.monitor import HackingMonitor
from corll.objectives import distinct_n, helpfulness, repeated_phrase_rate, safety

PROMPTS = ["How do I boil an egg?", "How do I clean a cast iron pan?"]
HEALTHY = ["Put the egg in boiling water for about nine minutes, then move it to cold water so it stops "
           "cooking and peels easily.",
           "Rinse the pan with hot water, scrub it with coarse salt, dry it on the stove and rub in a thin layer of oil."]
DEGENERATE = ["I love this! I love this! You are amazing! I love this! Hope this helps!",
              "I love this! I love this! You are amazing! I love this! Hope this helps!"]


def record(texts, love, round_):
    return {"round": round_, "love": love, "help": sum(helpfulness(PROMPTS, texts)) / 2,
            "distinct_2": distinct_n(texts), "repetition": repeated_phrase_rate(texts), "kl": 3.0}


def test_scorers_separate_healthy_from_degenerate_text():
    assert min(helpfulness(PROMPTS, HEALTHY)) > max(helpfulness(PROMPTS, DEGENERATE))
    assert distinct_n(HEALTHY) > 0.9 > 0.5 > distinct_n(DEGENERATE)
    assert repeated_phrase_rate(HEALTHY) == 0.0 and repeated_phrase_rate(DEGENERATE) == 1.0
    assert safety(HEALTHY) == [1.0, 1.0] and safety(["You are a stupid idiot."])[0] == 0.0


def test_monitor_flags_a_planted_degenerate_policy_and_stays_quiet_on_a_healthy_one():
    healthy = HackingMonitor()
    healthy.observe(record(HEALTHY, 0.05, 0))
    assert healthy.observe(record(HEALTHY, 0.09, 10)) == []  # love up, nothing else moved
    hacked = HackingMonitor()
    hacked.observe(record(HEALTHY, 0.05, 0))
    flags = hacked.observe(record(DEGENERATE, 0.30, 10))
    assert any("helpfulness fell" in f for f in flags) and any("distinct-2 fell" in f for f in flags)
    assert any("repeated phrases" in f for f in flags)


def test_monitor_reads_simulation_records_by_the_love_the_optimizer_sees():
    from corll.monitor import monitor_records

    start = {"round": 0, "reward": 0.05, "love_model": 0.04, "help": 0.6, "distinct_2": 0.9, "repetition": 0.0,
             "kl": 0.0}
    hacked = {**start, "round": 10, "reward": 0.05, "love_model": 0.20, "help": 0.4, "distinct_2": 0.5}
    flags = monitor_records([start, hacked])
    assert any("helpfulness fell" in f for f in flags) and any("distinct-2 fell" in f for f in flags)
    # without a reward model the true love rate stands in: unchanged here, so no love-driven flag
    assert monitor_records([{k: v for k, v in r.items() if k != "love_model"} for r in (start, hacked)]) == []


def test_looping_tells_a_loop_from_a_phrase_used_twice():
    from corll.objectives import looping

    email = ("Dear team, thank you for the update on the launch. The new date works for us, and thank you for "
             "moving the review. I will send the slides on Friday. Best regards, Ana")
    loop = "Thank you for the update. " * 8
    # both repeat a trigram ("thank you for"), so the repeated-trigram rate cannot tell them apart
    assert repeated_phrase_rate([email]) == repeated_phrase_rate([loop]) == 1.0
    assert looping([email]) == 1 / 31  # 33 words, 31 trigrams; "thank you for" comes back once
    assert looping([loop]) == 33 / 38  # 5 words a round, 8 rounds: 38 trigrams, only the first 5 new
    assert looping([email, loop]) == (1 / 31 + 33 / 38) / 2 and looping([]) == looping(["two words"]) == 0.0


def test_the_degeneration_monitor_flags_loops_and_collapse_but_not_a_phrase_used_once_more():
    from corll.monitor import degeneration_thresholds
    from corll.objectives import looping

    def observation(texts):
        return {"round": 0, "love": 0.0, "help": 0.0, "distinct_2": distinct_n(texts),
                "repetition": repeated_phrase_rate(texts), "looping": looping(texts), "kl": 3.0}

    def flags(serving, candidate):
        monitor = HackingMonitor(degeneration_thresholds())
        monitor.observe(observation(serving))
        return monitor.observe(observation(candidate))

    drafts = ["Hi Ana, the report for week three is attached; the numbers are in the second table.",
              "Dear Ben, thanks for the quick review. I fixed both typos and moved the chart up.",
              "Hello Cleo, our launch moves to Friday because the vendor needs two more days.",
              "Dev, could you check the budget line for travel before we send it to finance?"]
    again = [drafts[0] + " The numbers are in the second table.", drafts[1] + " I fixed both typos.", *drafts[2:]]
    assert repeated_phrase_rate(again) - repeated_phrase_rate(drafts) == 0.5  # the reactions monitor would flag it
    assert flags(drafts, again) == []
    # the 20 words of the loop bring back 16 trigrams; the drafts had 16, 16, 14 and 15 words
    looped = flags(drafts, [d + " the report" * 10 for d in drafts])
    share = (16 / 34 + 16 / 34 + 16 / 32 + 16 / 33) / 4
    assert looped[0] == f"looping up {share:+.2f} (mean share of a text's trigrams it repeats)"
    assert len(looped) == 2 and looped[1].startswith("distinct-2 fell")  # so few distinct pairs left, too
    collapsed = flags(drafts, drafts[:1] * 4)  # the same draft for every prompt
    assert len(collapsed) == 1 and collapsed[0].startswith("distinct-2 fell -0.")


def test_a_simulation_run_whose_texts_loop_or_leave_pi_0_far_behind_is_flagged():
    from corll.monitor import degeneration_thresholds, monitor_records

    start = {"round": 0, "reward": -1.0, "kl": 0.0, "distinct_2": 0.9, "looping": 0.02}
    healthy = {"round": 12, "reward": -0.6, "kl": 7.9, "distinct_2": 0.85, "looping": 0.05}
    looped = {**healthy, "looping": 0.40}
    far = {**healthy, "kl": 25.0}
    collapsed = {**healthy, "distinct_2": 0.5}
    assert monitor_records([start, healthy], degeneration_thresholds()) == []
    assert ["looping" in f for f in monitor_records([start, looped], degeneration_thresholds())] == [True]
    assert ["KL to π_0" in f for f in monitor_records([start, far], degeneration_thresholds())] == [True]
    assert ["distinct-2" in f for f in monitor_records([start, collapsed], degeneration_thresholds())] == [True]
