"""One decoding step of the served model, alone: how long it takes by batch width and precision, and how much
of it is the linear products.

    .venv/bin/python benchmarks/decode_step.py --rows 1,4,16,30 --repeats 3 --profile --out results/decode-step

The serving engine's throughput (`engine_load.py`, `serve_load.py`) mixes decoding steps with prefills and
the scheduler's own work. This isolates the step: `--rows` prompts are prefilled into corll's KV cache
(`kv_rows.RowsCache`, as the engine keeps it) and then `--steps` steps decode one token per row, through the
model as `load_frozen` prepares it for serving (prepacked products; bf16 throughout in bf16). Both precisions'
models live in one process and alternate, `--repeats` times per width, so machine noise hits both alike; the
table gives each the median step time, the step's rate counting only the linear products' operations (two per
weight per row: how near the step runs to the machine's matmul speed), and with `--profile` the share of the
steps' wall time spent inside the products (torch's profiler over one more pass of steps).

`--by-hand` adds, in each precision, the same step written out by hand for a Llama-shaped model
(`HandWrittenStep`): the same prepacked products, with q, k and v in one product and gate and up in another,
fused RMSNorm, one attention call per layer, no transformers, no peft, no cache object. It is a measuring
device, not a second engine: it bounds what removing every framework cost from the step can buy. Its logits
are checked against the model's own step on the same state before anything is timed.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F

from bench_common import publish
from corll.batches import left_pad
from corll.cpu_kernels import pack_weight, packed_linear
from corll.hardware import detect, set_threads
from corll.kv_rows import RowsCache
from corll.policy import Policy, load_frozen

PRECISIONS = ("fp32", "bf16")
PRODUCTS = ("mkldnn::_linear_pointwise", "aten::addmm", "aten::mm", "aten::linear")
AGREEMENT = 1e-3  # the largest fp32 logit difference the hand-written step may show from the model's own


def linear_flops_per_row(policy: Policy) -> int:
    """Two operations per weight of every linear layer: what one row's token costs in products."""
    return sum(2 * m.in_features * m.out_features for m in policy.model.modules() if isinstance(m, torch.nn.Linear))


@torch.no_grad()
def prefilled(policy: Policy, rows: int) -> tuple[torch.Tensor, torch.Tensor, RowsCache, torch.Tensor]:
    """`rows` different prompts prefilled into corll's KV cache: their mask, their last positions, the cache and
    each row's first token."""
    prompts = [policy.prompt_ids(f"Request {i}: write a short note about tea number {i}.") for i in range(rows)]
    ids, mask = left_pad(prompts, policy.tokenizer.pad_token_id)
    positions = (mask.cumsum(1) - 1).clamp(min=0)
    cache = RowsCache(rows)
    with policy.autocast():
        out = policy.model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                           use_cache=True, logits_to_keep=1)
    return mask, positions[:, -1:], cache, out.logits[:, -1].argmax(-1, keepdim=True)


@torch.no_grad()
def decode(policy: Policy, rows: int, steps: int, around: contextlib.AbstractContextManager | None = None
           ) -> list[float]:
    """Seconds of each of `steps` decoding steps for `rows` rows through the model, the steps (not the prefill)
    run inside `around`."""
    mask, position, cache, token = prefilled(policy, rows)
    times = []
    with policy.autocast(), around or contextlib.nullcontext():
        for _ in range(steps):
            mask = torch.cat([mask, torch.ones(rows, 1, dtype=torch.long)], dim=1)
            position = position + 1
            started = time.perf_counter()
            out = policy.model(input_ids=token, attention_mask=mask, position_ids=position, past_key_values=cache,
                               use_cache=True, logits_to_keep=1)
            token = out.logits[:, -1].argmax(-1, keepdim=True)
            times.append(time.perf_counter() - started)
    return times


class HandWrittenStep:
    """One decoding step of a Llama-shaped model (SmolLM2) written out with torch operations alone, on the
    model's own weights: RMSNorm, one product for q, k and v, rotary embedding, attention over the rows' own
    key/value buffers, one product for gate and up, SiLU, residual adds, the tied head. Every product is
    oneDNN's prepacked one, as the served model's are (`cpu_kernels`)."""

    def __init__(self, policy: Policy) -> None:
        config, model = policy.model.config, policy.model
        self.heads, self.kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.width, self.head = config.hidden_size, config.hidden_size // config.num_attention_heads
        self.eps = config.rms_norm_eps
        self.inv_freq = model.model.rotary_emb.inv_freq.float()
        if getattr(model.model.rotary_emb, "attention_scaling", 1.0) != 1.0:
            raise ValueError("--by-hand writes out plain rotary embeddings only")
        self.layers = []
        for layer in model.model.layers:
            attention, mlp = layer.self_attn, layer.mlp
            self.layers.append((
                layer.input_layernorm.weight,
                self._pack(attention.q_proj.weight, attention.k_proj.weight, attention.v_proj.weight),
                self._pack(attention.o_proj.weight), layer.post_attention_layernorm.weight,
                self._pack(mlp.gate_proj.weight, mlp.up_proj.weight), self._pack(mlp.down_proj.weight)))
        self.norm, self.embed = model.model.norm.weight, model.model.embed_tokens.weight
        self.output = self._pack(model.lm_head.weight)

    @staticmethod
    def _pack(*weights: torch.Tensor) -> torch.Tensor:
        return pack_weight(torch.cat(weights))

    def state(self, cache: RowsCache, mask: torch.Tensor, room: int
              ) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
        """Each layer's keys and values from a prefilled cache, with room for `room` more tokens, and the
        attention bias over them: 0 where a row may attend, -inf at its left padding."""
        rows, filled = mask.shape
        keys, values = [], []
        for layer in cache.layers:
            for source, into in ((layer.keys, keys), (layer.values, values)):
                buffer = source.new_zeros(rows, self.kv_heads, filled + room, self.head)
                buffer[:, :, :filled] = source[:rows]
                into.append(buffer)
        bias = torch.zeros(rows, filled + room).masked_fill_(F.pad(mask, (0, room), value=1) == 0, float("-inf"))
        return keys, values, bias

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor, keys: list[torch.Tensor],
                 values: list[torch.Tensor], filled: int, bias: torch.Tensor) -> torch.Tensor:
        """The next-token logits of each row; the rows' keys and values are written at `filled`. `bias` is 0
        where a row may attend and -inf at its padding."""
        rows, qk_width = tokens.shape[0], (self.heads + self.kv_heads) * self.head
        h = self.embed[tokens]
        angles = positions[:, None].float() * self.inv_freq[None]
        angles = torch.cat([angles, angles], dim=-1)[:, None]
        cos, sin = angles.cos().to(h.dtype), angles.sin().to(h.dtype)
        bias = bias[:, None, None, : filled + 1].to(h.dtype)
        half = self.head // 2
        for i, (norm_in, qkv, out, norm_mid, gate_up, down) in enumerate(self.layers):
            mixed = packed_linear(F.rms_norm(h, (self.width,), norm_in, self.eps), qkv)
            qk = mixed[:, :qk_width].view(rows, self.heads + self.kv_heads, self.head)
            qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
            keys[i][:, :, filled] = qk[:, self.heads:]
            values[i][:, :, filled] = mixed[:, qk_width:].view(rows, self.kv_heads, self.head)
            attended = F.scaled_dot_product_attention(qk[:, : self.heads, None], keys[i][:, :, : filled + 1],
                                                      values[i][:, :, : filled + 1], attn_mask=bias, enable_gqa=True)
            h = h + packed_linear(attended.reshape(rows, self.width), out)
            gate, up = packed_linear(F.rms_norm(h, (self.width,), norm_mid, self.eps), gate_up).chunk(2, dim=-1)
            h = h + packed_linear(F.silu(gate) * up, down)
        return packed_linear(F.rms_norm(h, (self.width,), self.norm, self.eps), self.output)


@torch.no_grad()
def decode_by_hand(step: HandWrittenStep, policy: Policy, rows: int, steps: int,
                   around: contextlib.AbstractContextManager | None = None) -> list[float]:
    """`decode`'s measurement through the hand-written step: the same prompts, prefilled by the model."""
    mask, position, cache, token = prefilled(policy, rows)
    keys, values, bias = step.state(cache, mask, steps)
    filled = mask.shape[1]
    position, token, times = position[:, 0], token[:, 0], []
    with around or contextlib.nullcontext():
        for n in range(steps):
            position = position + 1
            started = time.perf_counter()
            token = step(token, position, keys, values, filled + n, bias).argmax(-1)
            times.append(time.perf_counter() - started)
    return times


@torch.no_grad()
def disagreement(step: HandWrittenStep, policy: Policy, rows: int) -> float:
    """The largest difference between the hand-written step's logits and the model's own, for one step from the
    same prefilled state."""
    mask, position, cache, token = prefilled(policy, rows)
    keys, values, bias = step.state(cache, mask, 1)
    mine = step(token[:, 0], position[:, 0] + 1, keys, values, mask.shape[1], bias).float()
    with policy.autocast():
        theirs = policy.model(input_ids=token, attention_mask=F.pad(mask, (0, 1), value=1),
                              position_ids=position + 1, past_key_values=cache, use_cache=True,
                              logits_to_keep=1).logits[:, -1].float()
    return (mine - theirs).abs().max().item()


def product_share(run: Callable[..., list[float]], rows: int, steps: int) -> float:
    """The share of decoding steps' wall time spent inside the linear products (torch's profiler; the rest is
    the other operations and the Python between them)."""
    from torch.profiler import ProfilerActivity, profile

    prof = profile(activities=[ProfilerActivity.CPU])
    times = run(rows, steps, around=prof)
    products_us = sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in PRODUCTS)
    return products_us / (sum(times) * 1e6)


def render(results: dict) -> str:
    forwards = list(dict.fromkeys(r["forward"] for r in results["levels"]))
    lines = [f"**{results['machine']}**, {results['threads']} threads; {results['model']}, one decoding step "
             f"(median of {results['steps']} steps × {results['repeats']} alternating repeats per width, "
             "precision and forward), on corll's KV cache"
             + (" (by hand: the largest logit difference from the model's own step " + ", ".join(
                 f"{d:.1e} in {p}" for p, d in results["disagreement"].items()) + ")" if "by hand" in forwards
                else "") + ".", "",
             "| rows | precision | forward | step ms | step GFLOP/s (the products' operations) "
             "| products' share of the step's wall time |",
             "|---|---|---|---|---|---|"]
    for row in results["levels"]:
        share = f"{row['product_share']:.0%}" if row["product_share"] is not None else "–"
        lines.append(f"| {row['rows']} | {row['precision']} | {row['forward']} | {row['step_ms']:.1f} "
                     f"| {row['gflops']:.1f} | {share} |")
    by = {(r["rows"], r["precision"], r["forward"]): r["step_ms"] for r in results["levels"]}

    def ratios(faster: tuple[str, str], slower: tuple[str, str]) -> str:
        return "; ".join(f"{n} row{'s' * (n != 1)} ×{by[(n, *slower)] / by[(n, *faster)]:.2f}"
                         for n in results["rows"])

    lines += ["", "bf16 speed-up over fp32 (fp32 step time / bf16's), through transformers: "
              + ratios(("bf16", "transformers"), ("fp32", "transformers")) + "."]
    if "by hand" in forwards:
        lines += [f"The step by hand against transformers' ({precision}): "
                  + ratios((precision, "by hand"), (precision, "transformers")) + "." for precision in PRECISIONS]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--rows", default="1,4,16,30", help="Batch widths, comma-separated.")
    parser.add_argument("--steps", type=int, default=40, help="Decoding steps timed per repeat.")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, help="Compute threads (default: every CPU, as `corll serve`).")
    parser.add_argument("--profile", action="store_true", help="Also measure the products' share of a step.")
    parser.add_argument("--by-hand", action="store_true", help="Also time the step written out by hand "
                        "(`HandWrittenStep`); the table is written as <cpu>-by-hand-table.md.")
    parser.add_argument("--out", type=Path, help="Folder for <cpu>-table.md and .json.")
    args = parser.parse_args()
    threads = set_threads(args.threads)
    hardware = detect()
    widths = [int(r) for r in args.rows.split(",")]
    results = {"machine": f"{hardware.cpu} ({hardware.capability})", "threads": threads, "model": args.model,
               "steps": args.steps, "repeats": args.repeats, "rows": widths, "levels": []}
    policies = {p: load_frozen(args.model, precision=p) for p in PRECISIONS}
    flops = linear_flops_per_row(policies["fp32"])
    runs: dict[tuple[str, str], Callable[..., list[float]]] = {
        (p, "transformers"): partial(decode, policies[p]) for p in PRECISIONS}
    if args.by_hand:
        by_hand = {p: HandWrittenStep(policies[p]) for p in PRECISIONS}
        results["disagreement"] = {p: disagreement(by_hand[p], policies[p], max(widths)) for p in PRECISIONS}
        if results["disagreement"]["fp32"] > AGREEMENT:  # the math written out; bf16 rounds where it pleases
            raise SystemExit(f"the hand-written step's fp32 logits differ from the model's by "
                             f"{results['disagreement']['fp32']:.2g}")
        runs |= {(p, "by hand"): partial(decode_by_hand, by_hand[p], policies[p]) for p in PRECISIONS}
    for rows in widths:
        times: dict[tuple[str, str], list[float]] = {variant: [] for variant in runs}
        for _ in range(args.repeats):
            for variant, run in runs.items():
                times[variant] += run(rows, args.steps)
        for (precision, forward), run in runs.items():
            step = statistics.median(times[(precision, forward)])
            share = product_share(run, rows, min(args.steps, 10)) if args.profile else None
            row = {"rows": rows, "precision": precision, "forward": forward, "step_ms": step * 1000,
                   "gflops": flops * rows / step / 1e9, "product_share": share}
            results["levels"].append(row)
            print(row, file=sys.stderr, flush=True)
    publish(render(results), args.out, hardware, results, "by-hand" if args.by_hand else "")


if __name__ == "__main__":
    main()
