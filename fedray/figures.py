"""The report's figures as matplotlib Figures (Agg, no display needed), which `report.py` saves and
the notebook shows: Figure 2 style test accuracy at the best learning rate, Figure 6 style
training loss, one plot per setting with every learning rate of its grid; and the Markdown and
self-contained HTML pages that show them."""

from __future__ import annotations

import base64
import html
import io
import math

import matplotlib

if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
    matplotlib.use("Agg")  # headless report runs; a notebook keeps its inline backend
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from .curves import monotone  # noqa: E402
from .paper import PART, fmt_B, markdown  # noqa: E402


def short_label(s) -> str:
    return f"C={s['C']:g} E={s['E']:g} B={fmt_B(s['B'])}"


def slug(s) -> str:
    """File-name part naming a setting; the defaults (MNIST, K=100, no decay) are left out."""
    B = "inf" if math.isinf(s["B"]) else f"{s['B']:g}"
    parts = [] if s["dataset"] == "mnist" else [str(s["dataset"])]
    parts += [s["model"], s["partition"] + (f"{s['alpha']:g}" if s["partition"] == "dirichlet" else "")]
    parts += [f"C{s['C']:g}", f"E{s['E']:g}", f"B{B}", f"t{s['target']:g}"]
    parts += [] if s["K"] == 100 else [f"K{s['K']:g}"]
    parts += [] if s["lr_decay"] == 1 else [f"decay{s['lr_decay']:g}"]
    return "_".join(parts)


def best_history(runs: pd.DataFrame, s) -> pd.DataFrame:
    """The best learning rate's lowest seed: one curve per setting, as the paper draws them."""
    idx = s["trials"][s["best_lr"]]
    return runs.loc[min(idx, key=lambda i: runs.loc[i, "seed"]), "history"]


def _panels(n: int, title: str):
    # Figure(), not pyplot: a report with many settings would otherwise hold them all open in pyplot.
    fig = Figure(figsize=(6.0 * n, 4.2))
    axes = fig.subplots(1, n, squeeze=False)
    fig.suptitle(title, fontsize=11)
    return fig, axes[0]


def figure2(runs: pd.DataFrame, settings: pd.DataFrame) -> dict[str, Figure]:
    """Monotone test accuracy vs rounds at each setting's best lr; one panel per partition as in
    the paper, grey line at the target, y zoomed to just below the target."""
    figs = {}
    for (dataset, model, target), g in settings.groupby(["dataset", "model", "target"], sort=True):
        parts = sorted(g["partition"].unique(), key=lambda p: (p != "iid", p))
        fig, axes = _panels(len(parts), f"{model.upper()}: test accuracy at the best η per setting")
        for ax, part in zip(axes, parts):
            finals = []
            for _, s in g[g["partition"] == part].iterrows():
                h = best_history(runs, s)
                acc = monotone(h["test_accuracy"])
                if len(acc):
                    finals.append(acc[-1])
                    ax.plot(h["round"], acc, lw=1.4, label=f"{short_label(s)} η={s['best_lr']:g}")
            ax.axhline(target, color="grey", lw=1)
            # The paper zooms on the last few points below the target; don't zoom away every curve.
            lo = max(0.0, target - 0.3, min([target - 0.04] + [f - 0.02 for f in finals]))
            ax.set_ylim(lo, min(1.0, max([target + 0.02] + [f + 0.005 for f in finals])))
            ax.set(title=PART.get(part, part), xlabel="communication rounds", ylabel="test accuracy (best so far)")
            ax.legend(fontsize=7, loc="lower right")
        prefix = "" if dataset == "mnist" else f"{dataset}_"
        figs[f"figure2_{prefix}{model}_{target:g}.png"] = fig
    return figs


def figure6(runs: pd.DataFrame, settings: pd.DataFrame) -> dict[str, Figure]:
    """Training loss (log scale) at each setting's best lr, where the runs recorded it."""
    figs = {}
    for (dataset, model, target), g in settings.groupby(["dataset", "model", "target"], sort=True):
        curves = []
        for _, s in g.iterrows():
            h = best_history(runs, s)
            loss = pd.to_numeric(h.get("train_loss", pd.Series(dtype=float)), errors="coerce")
            ok = loss.notna() & (loss > 0)
            if ok.any():
                curves.append((s, h["round"][ok], loss[ok]))
        if not curves:
            continue
        parts = sorted({s["partition"] for s, _, _ in curves}, key=lambda p: (p != "iid", p))
        fig, axes = _panels(len(parts), f"{model.upper()}: training loss at the best η per setting")
        for ax, part in zip(axes, parts):
            for s, r, loss in curves:
                if s["partition"] == part:
                    ax.plot(r, loss, lw=1.4, label=f"{short_label(s)} η={s['best_lr']:g}")
            ax.set_yscale("log")
            ax.set(title=PART.get(part, part), xlabel="communication rounds", ylabel="training loss")
            ax.legend(fontsize=7)
        prefix = "" if dataset == "mnist" else f"{dataset}_"
        figs[f"figure6_{prefix}{model}_{target:g}.png"] = fig
    return figs


def grid_figures(runs: pd.DataFrame, settings: pd.DataFrame) -> dict[str, Figure]:
    """Raw test accuracy for every lr (every seed) of each setting, the best drawn thick: a best lr
    at an end of the grid, or a neighbour almost as good, says the grid should be widened."""
    figs = {}
    for _, s in settings.iterrows():
        fig = Figure(figsize=(6.4, 4.2))
        ax = fig.subplots()
        colors = plt.cm.viridis(np.linspace(0, 0.9, max(1, len(s["grid"]))))
        for color, lr in zip(colors, s["grid"]):
            r = s["per_lr"].set_index("lr").loc[lr]
            best = "" if np.isnan(r["acc_mean"]) else f", max {r['acc_mean']:.4f}"
            what = (f"{r['rounds_mean']:.1f} rounds" if r["reached"] else f"unfinished{best}" if r.get("unfinished")
                    else f"not reached{best}" if best else "diverged")  # fmt: skip
            for j, i in enumerate(sorted(s["trials"][lr], key=lambda i: runs.loc[i, "seed"])):
                h = runs.loc[i, "history"]
                ax.plot(h["round"], h["test_accuracy"], color=color, lw=2.2 if lr == s["best_lr"] else 0.9,
                        ls="-" if j == 0 else ":", label=f"η={lr:g}: {what}" if j == 0 else None)  # fmt: skip
        ax.axhline(s["target"], color="grey", lw=1)
        ax.set_ylim(max(0.0, s["target"] - 0.2), 1.0)
        if not any(len(runs.loc[i, "history"]) for ids in s["trials"].values() for i in ids):
            # A sweep published before any trial of this setting evaluated a round: say so, rather
            # than draw an empty frame around round 0 (matplotlib's default x range is -0.05..0.05).
            ax.set_xlim(0, 1)
            ax.text(0.5, 0.5, "no rounds recorded yet", transform=ax.transAxes, ha="center", va="center")
        flag = f" — best η: {s['edge']}" if s["edge"] else ""
        ax.set_title(f"{s['model'].upper()} {s['partition']} {short_label(s)}{flag}", fontsize=9)
        ax.set(xlabel="communication rounds", ylabel="test accuracy")
        ax.legend(fontsize=7, loc="lower right")
        figs[f"grid_{slug(s)}.png"] = fig
    return figs


def png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def to_markdown(blocks: list[tuple]) -> str:
    """report.md links the PNGs written beside it."""
    heads = {"h1": "# ", "h2": "## ", "h3": "### "}
    md = []
    for kind, x in blocks:
        md += [heads[kind] + x if kind in heads else markdown(x) if kind == "table" else
               "\n".join(f"- {v}" for v in x) if kind == "ul" else f"![{x}]({x})" if kind == "img" else x, ""]  # fmt: skip
    return "\n".join(md)


def to_html(blocks: list[tuple], figs: dict[str, bytes]) -> str:
    """report.html embeds the PNGs, so the one file can be mailed or archived on its own."""
    body = []
    for kind, x in blocks:
        if kind == "table":
            body.append(x.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}"))
        elif kind == "ul":
            body.append("<ul>" + "".join(f"<li>{html.escape(v)}</li>" for v in x) + "</ul>")
        elif kind == "img":
            b64 = base64.b64encode(figs[x]).decode()
            body.append(f'<figure><img alt="{x}" src="data:image/png;base64,{b64}"><figcaption>{x}</figcaption></figure>')
        else:
            body.append(f"<{kind}>{html.escape(x)}</{kind}>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}table{border-collapse:collapse;"
             "font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px}img{max-width:100%}")  # fmt: skip
    head = f"<head><meta charset='utf-8'><title>fedray report</title><style>{style}</style></head>"
    return "<!doctype html>\n<html>" + head + "<body>\n" + "\n".join(body) + "\n</body></html>\n"
