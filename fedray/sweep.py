"""`fedray sweep FILE`: one paper experiment as a Ray Tune sweep, one trial per FedAvg run.

Layout under the storage directory (default ./results/<name>):
    sweep.json               the sweep file as given and every trial's resolved config
    trials/<key>/            config.json, history.csv, summary.json, checkpoint.pt of one run
    tune/<experiment>/       Ray Tune's own layout (result.json, TensorBoard event files, ...)
A trial whose summary.json says it finished is never run again: `--resume` (or a copy of the
trials/ folder on another machine) runs only what is missing, from its last checkpoint, or from
round 0 when it has none (its earlier history.csv then kept as history.before_restart_<time>.csv).
A trial that stops at its target (the default) and can no longer change its setting's rounds to
target, its rate's rounds bounded below by its last round evaluated below the target and
already above a better rate that finished (`report.behind_best`), is stopped as "behind" and is
not run again by --resume while that holds (fused trials, and trials with stop_at_target: false,
run their whole budget). "Behind" is judged among the runs under the storage, or under the
directory given as --compare-with (which must contain the storage): a seed sweep kept in a storage
of its own, e.g. docs/results/seeds_x beside docs/results/table_x, then stops once its sibling
sweep's best rate has settled the setting.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

from .config import ExperimentConfig, load_mapping
from .resume import FINISHED, compare_root, keep_restarted_histories, plan
from .sweep_file import Sweep, load_sweep, trial_key


def bundles(runtime: dict[str, Any]) -> list[dict[str, float]]:
    """Resources one trial reserves: its own process plus one bundle per actor it starts, so a
    trial never waits for resources that other trials hold."""
    cpus, gpus = float(runtime["worker_cpus"]), float(runtime["worker_gpus"])
    if runtime["workers"] == 0:
        return [{"CPU": cpus, **({"GPU": gpus} if gpus else {})}]
    from .ray_runtime import placement_bundles

    return placement_bundles(int(runtime["workers"]), cpus, gpus)


def _behind_check(out: Path, among: Path):
    """`report.runs_behind(among)` for one trial, asked at most once per 20x what the last answer
    cost, so that reading the histories stays near 5% of the trial's time, however short its rounds
    (a CNN round of ~20 s asks every round or few; a 2NN round of ~0.1 s, every few)."""
    from .report import runs_behind

    me, next_at = out.resolve(), 0.0

    def behind() -> bool:
        nonlocal next_at
        t = time.perf_counter()
        if t < next_at:
            return False
        answer = me in runs_behind(among)
        next_at = time.perf_counter() + 20 * (time.perf_counter() - t)
        return answer

    return behind


def _trainable(config: dict[str, Any]) -> None:
    import ray
    from ray import tune

    rt = config["runtime"]
    if "experiments" in config["trial"]:
        return _fused_trainable(config)
    cfg = ExperimentConfig.from_dict(config["trial"]["experiment"])
    out = Path(config["trial"]["out"])
    among = Path(config["compare_root"])
    resume = (out / "checkpoint.pt").exists()

    def on_row(row: dict) -> None:
        metrics = {k: v for k, v in row.items() if v != ""}  # "diverged": the run stops here as diverged
        metrics["round_s"] = row["train_s"] + row["eval_s"]
        tune.report(metrics)

    meta = {"sweep": config["name"], "trial_key": out.name}
    if rt["workers"] == 0:
        import torch

        from .local import run_local

        torch.set_num_threads(max(1, int(rt["worker_cpus"])))
        device = "cuda" if ray.get_gpu_ids() else "cpu"
        result = run_local(cfg, out, device=device, resume=resume, force=True, on_row=on_row, meta=meta,
                           behind=_behind_check(out, among))  # fmt: skip
    else:
        from .ray_runtime import run_ray

        result = run_ray(
            cfg, out, workers=int(rt["workers"]), num_cpus=rt["worker_cpus"],
            num_gpus=rt["worker_gpus"], resume=resume, force=True, on_row=on_row, behind=_behind_check(out, among),
        )  # fmt: skip
    if not result.history:
        tune.report({"round": result.state.round, "diverged": result.status == "diverged"})


def _fused_trainable(config: dict[str, Any]) -> None:
    """One trial, a whole learning-rate grid of one setting; every lr keeps its own trial dir."""
    import ray
    import torch
    from ray import tune

    from .fused import run_fused

    cfgs = [ExperimentConfig.from_dict(e) for e in config["trial"]["experiments"]]
    torch.set_num_threads(max(1, int(config["runtime"]["worker_cpus"])))

    def on_row(i: int, row: dict) -> None:
        tune.report({k: v for k, v in row.items() if v != ""})

    run_fused(cfgs, [Path(o) for o in config["trial"]["outs"]], device="cuda" if ray.get_gpu_ids() else "cpu",
              on_row=on_row, meta={"sweep": config["name"]})  # fmt: skip


def _grid_search(todo: list[tuple[ExperimentConfig, Path]], fuse: bool) -> tuple[list[dict], list[str]]:
    """Tune's grid: one entry per trial, or per setting (all its lrs) when fused."""
    if not fuse:
        return [{"experiment": c.to_dict(), "out": str(d)} for c, d in todo], [d.name for _, d in todo]
    groups: dict[ExperimentConfig, list[tuple[ExperimentConfig, Path]]] = {}
    for c, d in todo:
        groups.setdefault(dataclasses.replace(c, lr=1.0), []).append((c, d))
    entries = [{"experiments": [c.to_dict() for c, _ in g], "outs": [str(d) for _, d in g]} for g in groups.values()]
    names = [trial_key(k).replace("_lr1_", "_lrgrid_") for k in groups]
    return entries, names


def _progress_callback(total: int):
    from ray.tune import Callback

    class Progress(Callback):
        done = 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.done += 1
            r = trial.last_result or {}
            acc = r.get("test_accuracy")
            print(f"[{self.done}/{total}] {trial.trial_id if not trial.custom_trial_name else trial.custom_trial_name}: "
                  f"round {r.get('round', 0)}" + (f", test accuracy {acc:.4f}" if acc is not None else ""), flush=True)  # fmt: skip

        def on_trial_error(self, iteration, trials, trial, **info):
            print(f"trial {trial.custom_trial_name or trial.trial_id} failed: see {trial.local_path}", flush=True)

    return Progress()


def run_sweep(
    sweep: Sweep,
    storage: Path,
    *,
    resume: bool = False,
    address: str | None = None,
    dashboard: bool = False,
    source: dict[str, Any] | None = None,
    compare_with: str | Path | None = None,
) -> dict[str, Any]:
    storage = Path(storage).absolute()
    todo = plan(sweep, storage, resume, compare_with)
    among = compare_root(storage, compare_with)
    (storage / "trials").mkdir(parents=True, exist_ok=True)
    _write_sweep_json(storage, sweep, source)
    started = time.time()
    log = storage / "sweep_runs.jsonl"
    # Logged now as well as at the end: a sweep longer than a sitting may be killed, not ended, and
    # the report's span for it still starts at its first sitting.
    _append_line(log, {"started": started, "trials_to_run": len(todo)})
    print(f"sweep {sweep.name}: {len(sweep.trials)} trials, {len(sweep.trials) - len(todo)} already finished or behind, {len(todo)} to run")
    for d, kept in keep_restarted_histories([d for _, d in todo], started):
        print(f"  {d.name}: no checkpoint.pt, restarts from round 0; its earlier history is kept as {kept.name}")
    try:
        if todo:
            _fit(sweep, storage, todo, address, dashboard, among)
    finally:  # also after a second Ctrl-C aborts Tune: the report dates this sitting by its end line
        wall = time.time() - started
        from .report import runs_behind

        behind = runs_behind(among)
        rows = [_trial_row(c, storage / "trials" / trial_key(c), behind) for c in sweep.trials]
        unfinished = [r for r in rows if r["status"] not in FINISHED and not r["behind"]]
        # "trials_to_run" as in the start line: those planned this sitting, not those Tune got to.
        _append_line(log, {"started": started, "wall_s": wall, "trials_to_run": len(todo), "unfinished": len(unfinished)})
    print(f"sweep {sweep.name}: a sitting of {wall:.0f} s for {len(todo)} trials to run; results in {storage}")
    for r in rows:
        rtt = "—" if r["rounds_to_target"] is None else f"{r['rounds_to_target']:.1f}"
        print(f"  {r['key']}: {r['status']}, rounds to target {rtt}")
    if unfinished:
        n = len(unfinished)
        print(f"{n} trial{'s' if n != 1 else ''} did not finish; run again with --resume", file=sys.stderr)
    return {"wall_s": wall, "trials": rows, "unfinished": len(unfinished)}


def _fit(sweep: Sweep, storage: Path, todo: list, address: str | None, dashboard: bool, among: Path) -> None:
    from ray import tune

    from .ray_runtime import init_ray
    from .runner import sigterm_as_ctrl_c

    init_ray(address, dashboard)
    trainable = tune.with_resources(_trainable, tune.PlacementGroupFactory(bundles(sweep.runtime)))
    entries, names = _grid_search(todo, sweep.runtime["fuse_lr"])
    keys = {json.dumps(e, sort_keys=True): n for e, n in zip(entries, names)}
    tuner = tune.Tuner(
        trainable,
        param_space={
            "trial": tune.grid_search(entries),
            "runtime": sweep.runtime,
            "name": sweep.name,
            "compare_root": str(among),
        },
        tune_config=tune.TuneConfig(
            trial_name_creator=lambda t: keys[json.dumps(t.config["trial"], sort_keys=True)],
            trial_dirname_creator=lambda t: keys[json.dumps(t.config["trial"], sort_keys=True)],
        ),
        run_config=tune.RunConfig(
            name=time.strftime("%Y%m%d-%H%M%S"),
            storage_path=str(storage / "tune"),
            failure_config=tune.FailureConfig(max_failures=2),
            verbose=0,  # Tune's per-trial config tables drown the progress; ours is one line a trial
            callbacks=[_progress_callback(len(todo))],
        ),
    )
    # Tune's SIGINT handler stops the trials and fit() returns, so the sitting's end is logged.
    with sigterm_as_ctrl_c():
        tuner.fit()


def _append_line(log: Path, entry: dict[str, Any]) -> None:
    with open(log, "a") as f:
        f.write(json.dumps(entry) + "\n")


def _trial_row(cfg: ExperimentConfig, d: Path, behind: set[Path]) -> dict[str, Any]:
    s = json.loads((d / "summary.json").read_text()) if (d / "summary.json").exists() else {}
    status = s.get("status")
    if status is None:  # stopped (Ctrl-C, SIGTERM, a crash) before its summary: say how far it got
        rows = (d / "history.csv").read_text().splitlines()[1:] if (d / "history.csv").exists() else []
        status = f"unfinished at round {rows[-1].split(',', 1)[0]}" if rows else "not run"
    is_behind = d.resolve() in behind
    if is_behind and status != "behind":
        status += ", behind the best"
    return {"key": d.name, "status": status, "rounds_to_target": s.get("rounds_to_target"), "behind": is_behind}


def _write_sweep_json(storage: Path, sweep: Sweep, source: dict[str, Any] | None) -> None:
    from .runner import atomic_write

    doc = {"name": sweep.name, "source": source, "runtime": sweep.runtime,
           "trials": [{"key": trial_key(c), **c.to_dict()} for c in sweep.trials]}  # fmt: skip
    atomic_write(storage / "sweep.json", json.dumps(doc, indent=2))


def add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="run a sweep file (tune_configs/*.yaml) as a Ray Tune sweep")
    p.add_argument("file", help="sweep YAML, e.g. tune_configs/quick.yaml")
    p.add_argument("--storage", help="results directory (default: ./results/<name>)")
    p.add_argument("--resume", action="store_true", help="run only the trials not finished yet")
    p.add_argument("--address", help="Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--dashboard", action="store_true", help="start the Ray dashboard (local Ray)")
    p.add_argument("--compare-with", metavar="DIR",
                   help="judge whether an unfinished trial is behind its setting's best rate among all runs "
                        "under DIR, which must contain --storage (default: the storage alone)")  # fmt: skip
    p.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    sweep = load_sweep(args.file)
    storage = Path(args.storage or Path("results") / sweep.name)
    result = run_sweep(sweep, storage, resume=args.resume, address=args.address,
                       dashboard=args.dashboard, source=load_mapping(args.file),
                       compare_with=args.compare_with)  # fmt: skip
    return 1 if result["unfinished"] else 0
