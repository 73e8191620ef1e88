"""CoRLL throughput: corll's loop against the loop a competent engineer builds on TRL, side by side.

    .venv/bin/pip install -e ".[bench]"
    .venv/bin/python benchmarks/throughput.py --rounds 3 --out results/throughput/performance-avx2-table.md  # one table per kind of CPU

The same workload for both (SmolLM2-135M-Instruct, LoRA r=8, k=4 samples, N=8
preferences per DPO step, 64 new tokens, the same prompts, the local editor as the
user), in one process, the two arms alternating round by round so machine noise
hits both alike. Both arms run in the precision each would pick on this machine
(bf16 only where the hardware computes it natively). Reported: the machine (CPU
model, vector capability, threads, measured matmul GFLOP/s per dtype),
preferences/s end to end, seconds per phase (sample, score for the argmax, user,
update), peak RSS per arm (each arm in a fresh subprocess, since a process's RSS
does not shrink back), and the update's FLOP/s as a fraction of the matmul peak of
the precision in use.

The TRL arm is what a competent engineer writes in an afternoon: one batched
`generate` for all prompts × k (left padding, `num_return_sequences=k`), batched
forwards for policy and reference scoring with TRL's `selective_log_softmax`, and
`trl.DPOTrainer` (reference = adapter disabled, i.e. the base model as in corll: TRL's own copy of the
current adapter as reference is removed, which would keep every step at loss ln 2; gradient checkpointing
off, the machine's precision) for one step per round; the table lists its loss per round as the check. It creates the trainer each round (a
trainer is bound to its dataset), so its Adam state restarts each step; that changes
its learning, not its cost per step.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

from corll.feedback import PreferencePair
from corll.hardware import choose_precision, detect, set_threads
from corll.learners.corll import implicit_rewards, pick
from corll.learners.dpo import DPOConfig, DPOLearner
from corll.policy import LoraSettings, Policy, SamplingConfig, load_policy
from corll.tasks import load_task
from corll.users import LocalEditor

K, N, NEW_TOKENS, LR, BETA = 4, 8, 64, 2e-4, 0.1
PHASES = ("sample", "score", "user", "update")


class PeakRSS:
    """Samples this process's resident memory every 20 ms and keeps the maximum."""

    def __init__(self) -> None:
        import psutil

        self.process, self.peak, self._stop = psutil.Process(), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self) -> PeakRSS:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self.thread.join()


def matmul_peak(dtype: torch.dtype, size: int = 1024, seconds: float = 2.0) -> float:
    """Achieved FLOP/s of a square matmul over about `seconds`: the machine's practical peak for that dtype."""
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    start, repeats = time.perf_counter(), 0
    while (elapsed := time.perf_counter() - start) < seconds:
        a @ b
        repeats += 1
    return 2 * size**3 * repeats / elapsed


def update_flops(policy: Policy, pairs: list[PreferencePair], shared_prompt: bool) -> float:
    """Forward + backward through the frozen weights ≈ 4·P·T for LoRA (no weight gradients), T the
    token positions the arm computes (corll runs each pair's prompt once, TRL twice)."""
    params = sum(p.numel() for p in policy.model.parameters())
    batch = policy.encode([p.prompt for p in pairs] * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    tokens = batch.tokens if shared_prompt else int(batch.prompt_mask.sum(1)[batch.row_prompt].sum()
                                                     + batch.response_mask.sum())
    return 4 * params * tokens


# --- the two arms ----------------------------------------------------------------------------


class CorllArm:
    name = "corll"

    def __init__(self, policy: Policy, editor: LocalEditor) -> None:
        self.policy, self.editor = policy, editor
        self.learner = DPOLearner(policy, DPOConfig(beta=BETA, lr=LR))

    def sample(self, prompts):
        samples, self.logps = self.policy.sample_scored(prompts, K)  # log π comes with the samples
        return samples

    def score(self, prompts, samples):
        return pick(samples, implicit_rewards(self.policy, prompts, samples, BETA, self.logps))

    def update(self, pairs):
        self.learner.step(pairs)


class TrlArm:
    name = "trl"

    def __init__(self, policy: Policy, editor: LocalEditor) -> None:
        self.policy, self.editor = policy, editor
        self.tokenizer = policy.tokenizer
        self.tokenizer.padding_side = "left"
        self.losses: list[float] = []  # each round's DPO loss: it must leave ln 2 once the adapter has moved

    def _chat(self, prompt: str, response: str | None = None) -> str:
        messages = [{"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text if response is None else text + response

    def sample(self, prompts):
        model, tok = self.policy.model, self.tokenizer
        model.eval()
        batch = tok([self._chat(x) for x in prompts], return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad(), self.policy.autocast():
            gen = model.generate(**batch, do_sample=True, temperature=1.0, top_k=50, max_new_tokens=NEW_TOKENS,
                                 num_return_sequences=K, pad_token_id=tok.pad_token_id)
        texts = tok.batch_decode(gen[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        return [texts[i * K : (i + 1) * K] for i in range(len(prompts))]

    def _logps(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        from trl.trainer.utils import selective_log_softmax

        tok, model = self.tokenizer, self.policy.model
        prompt_lengths = [len(tok(self._chat(x), add_special_tokens=False)["input_ids"]) for x in prompts]
        batch = tok([self._chat(x, y) for x, y in zip(prompts, responses)], return_tensors="pt", padding=True,
                    add_special_tokens=False)
        ids, mask = batch["input_ids"], batch["attention_mask"]
        with torch.no_grad(), self.policy.autocast():
            logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1]
        token = selective_log_softmax(logits.float(), ids[:, 1:])
        response = mask[:, 1:].clone()
        for row, (length, total) in enumerate(zip(prompt_lengths, mask.sum(1).tolist())):
            response[row, : ids.shape[1] - total + length - 1] = 0  # left padding, then the prompt
        return (token * response).sum(-1)

    def score(self, prompts, samples):
        flat_x = [x for x in prompts for _ in range(K)]
        flat_y = [y for ys in samples for y in ys]
        policy = self._logps(flat_x, flat_y)
        with self.policy.model.disable_adapter():
            ref = self._logps(flat_x, flat_y)
        best = (BETA * (policy - ref)).view(len(prompts), K).argmax(1).tolist()
        return [ys[i] for ys, i in zip(samples, best)]

    def update(self, pairs):
        from datasets import Dataset
        from trl import DPOConfig as TrlDPOConfig
        from trl import DPOTrainer

        data = Dataset.from_list([{"prompt": [{"role": "user", "content": p.prompt}],
                                   "chosen": [{"role": "assistant", "content": p.chosen}],
                                   "rejected": [{"role": "assistant", "content": p.rejected}]} for p in pairs])
        with tempfile.TemporaryDirectory() as out:
            args = TrlDPOConfig(output_dir=out, per_device_train_batch_size=len(pairs), max_steps=1,
                                learning_rate=LR, beta=BETA, save_strategy="no", report_to=[], use_cpu=True,
                                disable_tqdm=True, logging_steps=1000, seed=0, gradient_checkpointing=False,
                                bf16=self.policy.precision == "bf16")
            trainer = DPOTrainer(model=self.policy.model, ref_model=None, args=args, train_dataset=data,
                                 processing_class=self.tokenizer)
            # Handed a peft model, TRL copies its current adapter as the reference ("ref"), so every step would
            # start at the reference (loss ln 2, no learning signal): drop the copy, and TRL computes the
            # reference with the adapter disabled — the base model, π_0, as corll does.
            if "ref" in self.policy.model.peft_config:
                self.policy.model.delete_adapter("ref")
            self.losses.append(trainer.train().training_loss)


# --- running ---------------------------------------------------------------------------------


def make_arm(name: str):
    torch.manual_seed(0)
    precision = choose_precision("auto").precision  # each arm in what it would pick on this machine
    policy = load_policy("smollm2-135m-instruct", lora=LoraSettings(),
                         sampling=SamplingConfig(max_new_tokens=NEW_TOKENS), precision=precision)
    task = load_task("positive-review", policy)
    arm = (CorllArm if name == "corll" else TrlArm)(policy, LocalEditor(task))
    return arm, task


def run_round(arm, prompts, times):
    t0 = time.perf_counter()
    samples = arm.sample(prompts)
    t1 = time.perf_counter()
    drafts = arm.score(prompts, samples)
    t2 = time.perf_counter()
    edits = arm.editor.edit(prompts, drafts)
    pairs = [e.to_pair(x) for x, e in zip(prompts, edits) if e is not None]
    t3 = time.perf_counter()
    arm.update(pairs)
    t4 = time.perf_counter()
    for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
        times[phase].append(seconds)
    times["pairs"].append(len(pairs))
    times["update_flops"].append(update_flops(arm.policy, pairs, arm.name == "corll") if pairs else 0)


def peak_rss_of(name: str, rounds: int) -> int:
    """Peak RSS of one arm alone, in a fresh process."""
    out = subprocess.run([sys.executable, __file__, "--memory-only", name, "--rounds", str(rounds),
                          "--threads", str(torch.get_num_threads())],
                         check=True, capture_output=True, text=True)
    return int(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3, help="measured rounds per arm (after one warm-up round)")
    parser.add_argument("--out", type=Path, help="write the results table (Markdown) here")
    parser.add_argument("--memory-only", choices=("corll", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, help="threads (default: the CPUs available to this process)")
    args = parser.parse_args()
    set_threads(args.threads)

    if args.memory_only:
        arm, task = make_arm(args.memory_only)
        with PeakRSS() as rss:
            for r in range(args.rounds):
                run_round(arm, task.train_prompts[r * N : (r + 1) * N], defaultdict(list))
        print(rss.peak)
        return

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    arms = [make_arm("corll"), make_arm("trl")]
    times = {arm.name: defaultdict(list) for arm, _ in arms}
    for r in range(args.rounds + 1):  # round 0 warms up both arms and is not counted
        prompts = arms[0][1].train_prompts[r * N : (r + 1) * N]
        for arm, _ in (arms if r % 2 == 0 else arms[::-1]):
            torch.manual_seed(1000 + r)
            run_round(arm, prompts, times[arm.name] if r else defaultdict(list))
            print(f"round {r} {arm.name}: " + ", ".join(f"{p} {times[arm.name][p][-1]:.1f}s" for p in PHASES)
                  if r else f"warm-up {arm.name} done", flush=True)
    trl_losses = next(arm for arm, _ in arms if arm.name == "trl").losses
    if all(abs(loss - math.log(2)) < 1e-4 for loss in trl_losses[1:]):
        raise SystemExit(f"the TRL arm's loss stayed at ln 2 ({trl_losses}): its reference is its own adapter, "
                         "not the base model, and it is not doing DPO against π_0")
    memory = {name: peak_rss_of(name, 2) for name in times}
    rows = {}
    for name, t in times.items():
        total = sum(sum(t[p]) for p in PHASES)
        update_peak = peaks[choose_precision("auto").precision]
        rows[name] = {
            "prefs_per_s": sum(t["pairs"]) / total,
            **{p: statistics.fmean(t[p]) for p in PHASES},
            "peak_rss_gib": memory[name] / 2**30,
            "update_flops": sum(t["update_flops"]) / sum(t["update"]),
            "update_peak_fraction": sum(t["update_flops"]) / sum(t["update"]) / update_peak,
        }
    report = render(rows, peaks, args.rounds) + ("TRL arm's DPO loss per round (warm-up first): "
                                                 + ", ".join(f"{loss:.4f}" for loss in trl_losses) + "\n")
    print(report)
    if args.out:
        args.out.write_text(report)
        (args.out.with_suffix(".json")).write_text(json.dumps(
            {"machine": detect().as_dict(), "threads": torch.get_num_threads(), "rows": rows, "peaks": peaks},
            indent=2))


def machine_line(peaks: dict) -> str:
    """The machine a table was measured on: CPU, capability, threads, matmul peak per dtype."""
    hw = detect()
    return (f"**{hw.cpu}** ({hw.capability}, {'native' if hw.native_bf16 else 'no native'} bf16), "
            f"{torch.get_num_threads()} threads of {hw.cpus} CPUs; matmul peak fp32 {peaks['fp32'] / 1e9:.1f} "
            f"GFLOP/s, bf16 {peaks['bf16'] / 1e9:.1f} GFLOP/s; both arms in {choose_precision('auto').precision}.")


def render(rows: dict, peaks: dict, rounds: int) -> str:
    c, t = rows["corll"], rows["trl"]
    lines = [
        machine_line(peaks),
        "",
        f"Measured rounds per arm: {rounds} (plus one warm-up), alternating; workload: SmolLM2-135M-Instruct, "
        f"LoRA r=8, k={K}, N={N}, {NEW_TOKENS} new tokens.",
        "",
        "| arm | preferences/s | s/round | sample s | score s | user s | update s | peak RSS GiB | update GFLOP/s "
        "| of matmul peak |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        round_s = sum(r[p] for p in PHASES)
        lines.append(f"| {name} | {r['prefs_per_s']:.3f} | {round_s:.1f} | {r['sample']:.1f} | {r['score']:.1f} | {r['user']:.2f} | "
                     f"{r['update']:.1f} | {r['peak_rss_gib']:.2f} | {r['update_flops'] / 1e9:.0f} | "
                     f"{r['update_peak_fraction']:.0%} |")
    lines += ["", f"corll / TRL: preferences/s ×{c['prefs_per_s'] / t['prefs_per_s']:.2f}, "
                  f"rounds/s ×{sum(t[p] for p in PHASES) / sum(c[p] for p in PHASES):.2f}, "
                  f"peak RSS ×{c['peak_rss_gib'] / t['peak_rss_gib']:.2f}, "
                  f"update time ×{c['update'] / t['update']:.2f}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
