"""Would an early stop for learning rates that make no progress have changed the published tables?

Some rates of a grid oscillate near chance for their whole budget without a non-finite loss (so the
"diverged" stop never fires); in the 2NN non-IID sweeps they took up to a third of the trial time.
This replays two candidate stopping rules on every committed history under docs/results (no
training) and prints, per rule, how many trials it would stop, the trial time it would save, and
which trials that did reach the target it would have stopped first (each one can change a cell):

    .venv/bin/python notebooks/early_stop_check.py [docs/results]

- patience P: stop when P evaluated rounds pass without a new best test accuracy;
- floor (R, F): stop after round R if the best test accuracy so far is below F.

Measured on the 327 committed trials of 2026-12-01 (28.2 h of trial time):
    patience 20/50/100/200: saves 8.5/4.7/3.1/2.4 h, stops 77/31/13/2 trials that reached first;
        at 20/50/100 these include the best rate of non-IID C=0, B=10 (stopped at round 131/161/674;
        it reached 97% at 755.7), and at 100 seed 2 of IID FedSGD's best rate (stopped at 326,
        reached at 418.5).
    floor R=20, F=0.3 / R=50, F=0.3 / R=100, F=0.5: saves 1.44/1.31/1.89 h, stops none that reached.
    floor R=50, F=0.5: stops the best rate of non-IID C=0, B=inf (it reached at 1103.4).
So a patience rule changes the tables at any setting that saves time, and a floor rule saves 5-7%
and is safe only on these histories: the pathological non-IID C=0 runs stay below 50% for 20-50
rounds and still reach 97%. fedray has neither; budgets stay plain round limits.
"""

import sys
from pathlib import Path

from fedray.curves import rounds_to_target
from fedray.report import load_results


def load(root: Path) -> list[tuple[str, str, float, float, list[tuple[int, float, float]]]]:
    """(run, status, wall_s, rounds to target, [(round, test accuracy, elapsed_s)]) per finished run."""
    runs = load_results(root)
    runs = runs[~runs["unfinished"] & ~runs["duplicate"]]
    out = []
    for r in runs.itertuples():
        h = r.history
        if len(h):
            rtt = rounds_to_target(h["round"], h["test_accuracy"], r.target)
            rows = list(zip(h["round"], h["test_accuracy"], h["elapsed_s"]))
            out.append((r.run, r.status, r.wall_s, rtt, rows))
    return out


def patience_stop(rows, P: int):
    best, since = -1.0, 0
    for r, a, e in rows:
        best, since = (a, 0) if a > best else (best, since + 1)
        if since >= P:
            return r, e
    return None


def floor_stop(rows, R: int, F: float):
    upto = [(r, a, e) for r, a, e in rows if r <= R]
    if upto and rows[-1][0] > R and max(a for _, a, _ in upto) < F:
        return upto[-1][0], upto[-1][2]
    return None


def replay(runs, name: str, rule) -> None:
    stopped, saved, bad = 0, 0.0, []
    for run, status, wall_s, rtt, rows in runs:
        hit = rule(rows)
        if hit is None:
            continue
        stopped += 1
        saved += wall_s - hit[1]
        if status == "reached":
            bad.append(f"{run} (stopped at {hit[0]}, reached at {rtt:.1f})")
    total = sum(run[2] for run in runs)
    print(f"{name}: stops {stopped} trials, saves {saved / 3600:.2f} of {total / 3600:.1f} h; "
          f"stops {len(bad)} that reached first")
    for b in bad:
        print("   ", b)


def main(root: Path) -> None:
    runs = load(root)
    print(f"{len(runs)} trials under {root}")
    for P in (20, 50, 100, 200):
        replay(runs, f"patience {P}", lambda rows, P=P: patience_stop(rows, P))
    for R, F in ((20, 0.3), (50, 0.3), (50, 0.5), (100, 0.5)):
        replay(runs, f"floor R={R} F={F}", lambda rows, R=R, F=F: floor_stop(rows, R, F))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results"))
