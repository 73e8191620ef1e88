"""The feedback service's commands: API keys, serving, learning from the log, versions, forgetting, export.

They register on the one `corll` app (`corll.cli.common.app`); `corll.cli` imports this module to load them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

from corll.cli.common import (D, DbOption, PrecisionOption, ThreadsOption, app, console, fail, open_store,
                              progress_bars, use_hardware)
from corll.models import BUILTIN_MODELS

keys_app = typer.Typer(help="API keys: each is bound to one tenant and one user.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    tenant: Annotated[str, typer.Option(help="Tenant (organisation or app) the key belongs to.")],
    user: Annotated[str, typer.Option(help="End user the key acts for.")],
    admin: Annotated[bool, typer.Option(help="May read the tenant's whole log and act on any of its completions.")]
    = False,
    expires: Annotated[Optional[str], typer.Option(
        help="When the key stops working: a duration (90d, 12h, 30m) or a UTC date/time (2027-01-31).")] = None,
    db: DbOption = None,
) -> None:
    """Create an API key; it is printed once (only its hash is stored)."""
    from corll.store import StoreError

    try:
        expires_at = parse_expiry(expires) if expires else None
    except ValueError as exc:
        fail(f"--expires: {exc}")
    try:
        print(open_store(db, must_exist=False).create_api_key(tenant, user, admin=admin, expires_at=expires_at))
    except StoreError as exc:
        fail(str(exc))


def parse_expiry(text: str):
    """A duration from now ('90d', '12h', '30m') or an ISO date/time taken as UTC."""
    from datetime import datetime, timedelta, timezone

    units = {"d": "days", "h": "hours", "m": "minutes"}
    if text[:-1].isdigit() and text[-1] in units:
        return datetime.now(timezone.utc) + timedelta(**{units[text[-1]]: int(text[:-1])})
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration like 90d, 12h, 30m nor a date like 2027-01-31") from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
    if moment <= datetime.now(timezone.utc):
        raise ValueError(f"{text} is in the past")
    return moment


@keys_app.command("list")
def keys_list(tenant: Annotated[Optional[str], typer.Option(help="Only this tenant's keys.")] = None,
              db: DbOption = None) -> None:
    """The keys that exist (their ids and first characters, never the keys), with their state."""
    from datetime import datetime, timezone

    from rich.table import Table

    now = datetime.now(timezone.utc)
    table = Table("id", "key starts", "tenant", "user", "admin", "created", "expires", "state")
    for k in open_store(db).list_api_keys(tenant):
        expires = k.expires_at.replace(tzinfo=k.expires_at.tzinfo or timezone.utc) if k.expires_at else None
        state = "revoked" if k.revoked_at else "expired" if expires and expires <= now else "active"
        table.add_row(str(k.id), f"{k.prefix}…" if k.prefix else "(older key)", k.tenant, k.user,
                      "yes" if k.admin else "", k.created_at.strftime("%Y-%m-%d %H:%M"),
                      expires.strftime("%Y-%m-%d %H:%M") if expires else "never", state)
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[int, typer.Argument(help="The key's id (see `corll keys list`).")],
                db: DbOption = None) -> None:
    """Revoke a key: requests with it answer 401 from now on."""
    from corll.store import NotFoundError

    try:
        info = open_store(db).revoke_api_key(key_id)
    except NotFoundError as exc:
        fail(str(exc))
    console.print(f"key {info.id} ({info.tenant}/{info.user}) revoked")


@app.command()
def forget(
    tenant: Annotated[str, typer.Option(help="The user's tenant.")],
    user: Annotated[str, typer.Option(help="The user to forget.")],
    db: DbOption = None,
) -> None:
    """Forget a user: delete their interactions, feedback and keys, retire (and delete) every policy
    version trained on their feedback; a server stops serving those at its next request."""
    from corll.store import NotFoundError, forget as forget_user

    try:
        removed = forget_user(open_store(db), tenant, user)
    except NotFoundError as exc:
        fail(f"{exc}: nothing to forget")
    console.print(f"forgot {tenant}/{user}: {removed['interactions']} interactions, {removed['feedback_events']} "
                  f"feedback events, {removed['api_keys']} keys; retired versions "
                  f"{', '.join(map(str, removed['retired_versions'])) or 'none'}")


def port_problem(host: str, port: int) -> str | None:
    """Why the server could not listen on host:port (None if it can)."""
    import socket

    try:
        info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(info[0], socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(info[4])
    except OSError as exc:
        return f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port)"
    return None


@app.command()
def serve(
    model: Annotated[str, typer.Option(help=f"{' | '.join(BUILTIN_MODELS)} | a local model directory")] = D.model,
    db: DbOption = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    precision: PrecisionOption = "auto",
    threads: ThreadsOption = None,
    max_tokens: Annotated[int, typer.Option(help="Default response length cap in tokens.")] = 128,
    max_batch: Annotated[int, typer.Option(
        help="Sequences decoded together (continuous batching across users' adapters); 1 serves one at a time.",
        min=1)] = 32,
    max_user_rows: Annotated[Optional[int], typer.Option(
        help="One user's share of the batch in sequences; their further requests wait while others' run "
             "[default: half of --max-batch].", min=1)] = None,
    max_loaded_adapters: Annotated[int, typer.Option(
        help="Users' adapters kept in memory; beyond that the least recently used is unloaded (read again "
             "from disk, off the decoding thread, when its user returns).", min=1)] = 32,
    max_lora_rank: Annotated[int, typer.Option(
        help="The largest LoRA rank an adapter may have (each loaded adapter takes memory for this rank).",
        min=1)] = 8,
    prefix_cache_mib: Annotated[int, typer.Option(
        help="Memory for prompts' cached beginnings (corll's engine): a user's next prompt that begins as an "
             "earlier one did (the chat template, an app's system prompt) is prefilled from where it ends; "
             "each user's own, never shared; 0 turns it off.", min=0)] = 256,
    engine: Annotated[str, typer.Option(
        help="corll (its own transformers engine), vllm (vLLM's server, from scripts/setup-vllm.sh), or auto "
             "(vLLM on a GPU where installed, else corll's; it says why).")] = "auto",
    vllm_url: Annotated[Optional[str], typer.Option(
        help="With --engine vllm: a vLLM OpenAI server already running (else corll starts one).")] = None,
    max_loras: Annotated[int, typer.Option(help="With --engine vllm: adapters in one batch (vLLM's --max-loras).",
                                           min=1)] = 8,
    vllm_args: Annotated[str, typer.Option(
        help="With --engine vllm: more flags for vLLM's server, e.g. \"--tensor-parallel-size 2\".")] = "",
    max_user_requests: Annotated[int, typer.Option(
        help="Requests one user may have waiting or running; beyond that: 429 with Retry-After.", min=1)] = 16,
    learn: Annotated[bool, typer.Option(
        help="Also start the learner (`corll learn`) on this database: users' edits become promoted versions "
             "with no command run; it takes one thread and serving the rest.")] = False,
    learn_min_edits: Annotated[int, typer.Option(help="With --learn: new edits a user needs before a candidate.",
                                                 min=1)] = 8,
    adapters: Annotated[Path, typer.Option(help="With --learn: folder for trained adapters.")] = Path("corll-adapters"),
    learn_options: Annotated[str, typer.Option(
        help="With --learn: more options for the learner, as `corll learn` takes them "
             "(e.g. \"--margin 0.5 --replay 32\").")] = "",
) -> None:
    """Serve the current policy behind an OpenAI-compatible API and take feedback (and with --learn, learn from it)."""
    import os
    import shlex
    import subprocess
    import sys

    from corll.hardware import prepare_serving_threads

    prepare_serving_threads()  # before torch loads: OpenMP's brief spin between a decoding step's operations
    import uvicorn

    from corll.models import ModelNotFoundError, resolve_model
    from corll.server.app import create_app
    from corll.server.engine import PolicyEngine

    try:
        resolve_model(model)
    except ModelNotFoundError as exc:
        fail(str(exc))
    if problem := port_problem(host, port):  # before the model loads, not 30 s later
        fail(problem)
    extra = shlex.split(learn_options)
    if learn and (problem := learner_options_problem(extra)):  # before the server starts, not in a child's log
        fail(f"--learn-options: {problem}")
    store = open_store(db, must_exist=False)
    if learn and threads is None:  # one core for the learner, the rest for serving
        from corll.hardware import available_cpus

        threads = max(1, available_cpus() - 1)
    requested, precision = precision, use_hardware(precision, threads)
    from corll.hardware import compute_device
    from corll.server.engines import choose_engine
    from corll.server.vllm_engine import vllm_installed

    try:
        kind, why = choose_engine(engine, vllm_installed=vllm_url is not None or vllm_installed(),
                                  cuda=compute_device() != "cpu")
    except ValueError as exc:
        fail(str(exc))
    console.print(f"engine: {kind} ({why})")
    if kind == "vllm":
        from corll.server.protocol import EngineError
        from corll.server.vllm_engine import VLLMEngine, VLLMLaunch

        launch = VLLMLaunch(max_loras=max_loras, max_cpu_loras=max_loaded_adapters, max_lora_rank=max_lora_rank,
                            precision=precision, extra=tuple(shlex.split(vllm_args)))
        try:
            with console.status("starting vLLM (about half a minute on a CPU)"):
                serving = VLLMEngine(model, url=vllm_url, launch=launch, default_max_tokens=max_tokens,
                                     max_user_requests=max_user_requests)
        except (EngineError, ModelNotFoundError) as exc:
            fail(str(exc))
    else:
        serving = PolicyEngine(model, precision=precision, default_max_tokens=max_tokens, max_batch=max_batch,
                               max_user_rows=max_user_rows, max_user_requests=max_user_requests,
                               max_loaded_adapters=max_loaded_adapters, max_lora_rank=max_lora_rank,
                               prefix_cache_mib=prefix_cache_mib)
    learner = None
    if learn:  # a separate process at lower priority: training never blocks serving; restarted if it dies
        from corll.processes import die_with_parent
        from corll.service.supervise import LearnerSupervisor

        learner = LearnerSupervisor(lambda: subprocess.Popen(
            [sys.executable, "-m", "corll", "learn", "--model", model, "--adapters", str(adapters),
             "--min-edits", str(learn_min_edits), "--threads", "1", "--precision", requested, *extra],
            env={**os.environ, "CORLL_DATABASE_URL": store.url},  # the URL (and any password) stays out of `ps`
            preexec_fn=die_with_parent), store).start()
    console.print(f"serving {model} on http://{host}:{port}/v1 (store: {store.url.split('@')[-1]})"
                  + (f"; learning after {learn_min_edits} new edits per user" if learn else ""))
    try:
        uvicorn.run(create_app(store, serving, learner=learner.status if learner else None), host=host, port=port,
                    log_level="warning")
    finally:
        if learner is not None:
            learner.stop()
        serving.close()


def learner_options_problem(options: list[str]) -> str | None:
    """What is wrong with options meant for `corll learn`, as its own parser says, or None."""
    names = {o.split("=")[0] for o in options}
    if overlap := names & {"--model", "--adapters", "--min-edits", "--threads", "--precision", "--db"}:
        return f"{', '.join(sorted(overlap))} set by serve itself (use serve's own option)"
    if names & {"--help", "--once"}:
        return "--help and --once do not apply to a learner that runs beside the server"
    try:
        typer.main.get_command(app).commands["learn"].make_context("learn", list(options))
    except typer.TyperException as exc:
        return exc.format_message() if hasattr(exc, "format_message") else str(exc)
    return None


@app.command()
def train(
    model: Annotated[str, typer.Option(help="The model the server runs (the adapters' base).")] = D.model,
    db: DbOption = None,
    adapters: Annotated[Path, typer.Option(help="Folder for trained adapters.")] = Path("corll-adapters"),
    tenant: Annotated[Optional[str], typer.Option(help="Only this tenant (default: every tenant).")] = None,
    since_version: Annotated[Optional[int], typer.Option(
        help="Use feedback newer than this version's training data (default: the active version's; 0: all).")] = None,
    per_user: Annotated[bool, typer.Option(help="One adapter per user with enough feedback.")] = False,
    min_feedback: Annotated[int, typer.Option(help="Fewest new preferences worth a new version.")] = 8,
    epochs: Annotated[int, typer.Option(help="Passes over the new preferences.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", "-N", help="Preferences per DPO step.")] = 8,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = D.lr,
    beta: Annotated[float, typer.Option(help="DPO β.")] = D.beta,
    precision: PrecisionOption = "auto",
    threads: ThreadsOption = None,
) -> None:
    """Turn new edits in the log into CoRLL updates; each trained adapter becomes the active version."""
    from corll.learners.dpo import DPOConfig
    from corll.service.candidate import LogTrainingConfig, train_from_log
    from corll.store import NotFoundError

    if min_feedback < 1 or epochs < 1 or batch_size < 1 or lr <= 0 or beta <= 0:
        fail("--min-feedback, --epochs and --batch-size must be >= 1; --lr and --beta > 0")
    precision = use_hardware(precision, threads)
    config = LogTrainingConfig(model=model, adapters_dir=adapters, tenant=tenant, since_version=since_version,
                               per_user=per_user, min_feedback=min_feedback, epochs=epochs, batch_size=batch_size,
                               dpo=DPOConfig(lr=lr, beta=beta), precision=precision)
    store = open_store(db)
    columns = (TextColumn("{task.description:<20}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[status]}"))
    with progress_bars(*columns) as bar:
        bars: dict[str, int] = {}

        def progress(who: str, done: int, total: int, loss: float) -> None:
            if who not in bars:
                bars[who] = bar.add_task(who, total=total, status="")
            bar.update(bars[who], completed=done, status=f"DPO step {done}/{total} · loss {loss:.4f}" if done else
                       "first step")

        try:
            trained = train_from_log(store, config, log=console.print, progress=progress)
        except NotFoundError as exc:
            fail(str(exc))
    for v in trained:
        console.print(f"version {v.version_id}: {v.tenant}/{v.user or 'shared'} from {v.pairs} preferences "
                      f"({v.unchanged_edits} unchanged edits skipped), final loss {v.final_loss:.4f}")
    if not trained:
        console.print("no new version: not enough new preferences")


@app.command()
def learn(
    model: Annotated[str, typer.Option(help="The model the server runs (the adapters' base).")] = D.model,
    db: DbOption = None,
    adapters: Annotated[Path, typer.Option(help="Folder for trained adapters.")] = Path("corll-adapters"),
    min_edits: Annotated[int, typer.Option(help="New edits a user needs before a candidate is trained.", min=1)] = 8,
    holdout: Annotated[float, typer.Option(
        help="Newest share of a user's untrained edits held out to judge the candidate (at least one).",
        min=0.0, max=0.9)] = 0.25,
    replay: Annotated[int, typer.Option(help="Older edits of the user revisited with the new ones.", min=0)] = 16,
    shared: Annotated[bool, typer.Option(help="Also learn each tenant's shared policy from all its users' edits.")]
    = False,
    epochs: Annotated[int, typer.Option(help="Passes over a candidate's preferences.", min=1)] = 4,
    batch_size: Annotated[int, typer.Option("--batch-size", "-N", help="Preferences per DPO step.", min=1)] = 4,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 3e-4,
    beta: Annotated[float, typer.Option(help="DPO β.")] = D.beta,
    sft_weight: Annotated[float, typer.Option(
        help="Weight of a supervised term on the user's edit (its per-token NLL) added to the DPO loss.",
        min=0.0)] = 0.0,
    margin: Annotated[float, typer.Option(
        help="Nats by which a candidate must raise the held-out edits' log-likelihood margin over the drafts.")] = 0.0,
    cost_slack: Annotated[float, typer.Option(
        help="Tokens per draft by which a candidate's own drafts for the held-out prompts may cost the user more "
             "than the serving version's, by their edit habits (what their edits insert or delete again and "
             "again).")] = 0.0,
    habit_share: Annotated[float, typer.Option(
        help="Share of a user's edits a change must recur in to count as a habit.", min=0.0, max=1.0)] = 0.5,
    draft_samples: Annotated[int, typer.Option(
        help="Drafts each version writes per held-out prompt for that comparison.", min=1)] = 4,
    kl_limit: Annotated[float, typer.Option(help="Reject a candidate whose samples are this far from the base "
                                                  "model (KL in nats per response).")] = 20.0,
    canary_share: Annotated[float, typer.Option(
        help="Online canary: the share of a user's drafts a candidate that passed the offline gate writes until "
             "their edits show it costs them fewer edited words than the version they have (promoted) or not "
             "(rejected). 0: the offline gate promotes alone.", min=0.0, max=0.95)] = 0.0,
    canary_alpha: Annotated[float, typer.Option(
        help="The canary's chance of promoting a candidate that is not better, however often it looks.",
        min=1e-6, max=0.5)] = 0.05,
    canary_budget: Annotated[int, typer.Option(
        help="Edited candidate drafts after which an undecided canary is rejected.", min=1)] = 40,
    poll: Annotated[float, typer.Option(help="Seconds between looks at the feedback log.", min=0.1)] = 10.0,
    once: Annotated[bool, typer.Option(help="One pass over the log, then exit (for cron).")] = False,
    nice: Annotated[int, typer.Option(help="Lower the learner's CPU priority by this much (serving comes first).",
                                      min=0, max=19)] = 10,
    precision: PrecisionOption = "auto",
    threads: Annotated[int, typer.Option(help="Threads for training (keep the rest of the cores for serving).",
                                         min=1)] = 1,
) -> None:
    """Learn while serving: train a candidate for each user with enough new edits, check it on their
    newest edits, and promote it (the server switches at its next request) or reject it with the reason."""
    import os

    from corll.service.canary import CanarySettings
    from corll.service.learn import LearnConfig, run_learner
    from corll.service.team import Team
    from corll.store import LearnerBusyError
    from corll.monitor import degeneration_thresholds
    from corll.learners.dpo import DPOConfig

    if lr <= 0 or beta <= 0:
        fail("--lr and --beta must be > 0")
    os.nice(nice)
    precision = use_hardware(precision, threads)
    config = LearnConfig(model=model, adapters_dir=adapters, min_edits=min_edits, holdout=holdout, replay=replay,
                         shared=shared, epochs=epochs, batch_size=batch_size,
                         dpo=DPOConfig(lr=lr, beta=beta, sft_weight=sft_weight),
                         margin=margin, cost_slack=cost_slack, habit_share=habit_share, draft_samples=draft_samples,
                         monitor=degeneration_thresholds(kl_limit), precision=precision,
                         canary=CanarySettings(canary_share, canary_alpha, canary_budget))
    team = Team()  # under `accelerate launch`, this process's place among the learner's processes
    if not team.leads:
        team.follow(config)
        return
    store = open_store(db)
    console.print(f"learning from {store.url.split('@')[-1]}: a candidate per user after {min_edits} new edits"
                  + (f", tried live on {canary_share:.0%} of their drafts" if canary_share else "")
                  + ("" if once else f", looking every {poll:g} s (Ctrl-C stops)"))
    try:
        with store.learner_lock():
            run_learner(store, config, poll=poll, once=once, report=console.print, team=team)
    except LearnerBusyError as exc:
        fail(str(exc))
    except KeyboardInterrupt:
        console.print("learner stopped; it resumes from the log's watermarks")


@app.command()
def status(db: DbOption = None, tenant: Annotated[Optional[str], typer.Option(help="Only this tenant.")] = None) -> None:
    """What the learner is doing, and per user: the version serving them, edits waiting, the last decision."""
    from datetime import datetime, timezone

    from rich.table import Table

    from corll.service.queue import EditQueue, edit_to_decision
    from corll.store.schema import aware

    store = open_store(db)
    now = datetime.now(timezone.utc)
    workers = store.worker_states()
    for w in workers:
        due = f"; {w.queue} lineages due at its last poll" if w.queue is not None else ""
        console.print(f"{w.name} (pid {w.pid}, {int((now - aware(w.updated_at)).total_seconds())} s ago): {w.state}{due}")
    if not workers:
        console.print("no learner has run on this database (start one: `corll learn` or `corll serve --learn`)")
    if (waits := edit_to_decision(store)) is not None:
        console.print(f"edit to decision over the last {waits['decisions']} decisions: p50 {waits['p50']:.0f} s, "
                      f"p95 {waits['p95']:.0f} s")
    last = {(d.tenant, d.user): d for d in store.decisions(tenant)}
    table = Table("tenant", "user", "serving", "new edits", "last decision", "when")
    queue = EditQueue(store, min_edits=1, shared=True, tenant=tenant)
    queue.poll()
    for lineage in sorted(queue.lineages, key=str):
        serving = store.active_version(lineage.tenant, lineage.user)
        d = last.get((lineage.tenant, lineage.user))
        table.add_row(lineage.tenant, lineage.user or "(shared)",
                      "base model" if serving is None or serving.adapter_path is None else f"version {serving.id}",
                      str(len(queue.waiting(lineage))),
                      f"{d.decision} version {d.version_id}: {d.reason}" if d else "",
                      d.created_at.strftime("%Y-%m-%d %H:%M:%S") if d else "")
    console.print(table)


@app.command()
def versions(db: DbOption = None, tenant: Annotated[Optional[str], typer.Option()] = None) -> None:
    """List policy versions: which serve requests, and for the learner's candidates whether the gate
    promoted or rejected them and why."""
    from rich.table import Table

    from corll.service.versions import version_rows

    table = Table(title="policy versions")
    for column in ("id", "tenant", "user", "status", "parent", "preferences", "created", "decision · reason"):
        table.add_column(column)
    for v in version_rows(open_store(db), tenant):
        table.add_row(str(v.id), v.tenant, v.user or "(shared)", v.status, str(v.parent or ""),
                      str(v.preferences or ""), v.created_at.replace("T", " "),
                      f"{v.decision} · {v.reason}" if v.decision else v.reason)
    console.print(table)


@app.command()
def rollback(
    version: Annotated[int, typer.Argument(help="The version to serve again; 0 is the base model.")],
    tenant: Annotated[Optional[str], typer.Option(help="With version 0: whose versions to roll back.")] = None,
    user: Annotated[Optional[str], typer.Option(
        help="With version 0: only this user's (default: the tenant's shared policy).")] = None,
    db: DbOption = None,
) -> None:
    """Serve an earlier version again (for its tenant and user), or the base model (0); the server
    switches at its next request, and the learner trains that user again only on newer feedback."""
    from corll.store import StoreError

    if version == 0 and tenant is None:
        fail("rolling back to the base model (version 0) needs --tenant (and --user for one user)")
    try:
        row = open_store(db).rollback(version, tenant=tenant, user=user)
    except StoreError as exc:  # no such version, or a retired one
        fail(str(exc))
    what = "the base model" if row.adapter_path is None else f"version {row.id}"
    console.print(f"{what} is active for {row.tenant}/{row.user or 'shared'}")


@app.command()
def export(
    format: Annotated[str, typer.Option("--format", help="trl-preference | trl-kto | openai-dpo | sft")],
    out: Annotated[Path, typer.Option(help="JSONL file to write.")],
    db: DbOption = None,
    tenant: Annotated[Optional[str], typer.Option(help="Only this tenant.")] = None,
) -> None:
    """Export logged feedback as training data (JSONL)."""
    from corll.service.export import FORMATS, write_jsonl

    if format not in FORMATS:
        fail(f"unknown --format {format!r}: use one of {', '.join(FORMATS)}")
    n = write_jsonl(open_store(db).feedback(tenant=tenant), format, out)
    console.print(f"{n} rows in {format} format: {out}")

