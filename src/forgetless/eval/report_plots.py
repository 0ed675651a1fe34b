"""The report's charts: training and validation loss, the retention probe during training, task score
against retention, and the adapter scale dial; each a PNG written under a temporary name, or no file
when the runs hold nothing to draw (the functions say which with their result).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; never a display
import matplotlib.pyplot as plt

from forgetless import files


def line_plot(runs: list[dict], series: list[tuple[str, str, str]], ylabel: str, title: str, path: Path) -> bool:
    """One line per (run, metrics key); series = [(key, matplotlib style, label suffix)]."""
    fig, ax = plt.subplots(figsize=(7, 3.6))
    drawn = False
    for r in runs:
        for key, style, suffix in series:
            pts = [(m["step"], m[key]) for m in r["metrics"] if key in m]
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], style, label=f"{r['name']}{suffix}", linewidth=1)
                drawn = True
    ax.set(xlabel="step", ylabel=ylabel, title=title)
    if drawn:
        ax.legend(fontsize=7)
    fig.tight_layout()
    with files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return drawn


def plot_losses(runs: list[dict], path: Path) -> bool:
    series = [("loss", "-", " train"), ("val_loss", "o-", " validation")]
    return line_plot(runs, series, "loss", "training and validation loss", path)


def plot_probe(runs: list[dict], path: Path) -> bool:
    series = [("retention_kl", "o-", "")]
    return line_plot(runs, series, "KL to base / token", "retention probe during training", path)


def plot_tradeoff(runs: list[dict], path: Path) -> bool:
    pts = []
    for r in runs:
        task = r["eval"].get("task", {}).get(r["metric"], {})
        kl = (r["eval"].get("retention", {}).get("prompts") or {}).get("kl_per_token")
        if task.get("finetuned") is not None and kl is not None:
            pts.append((kl, task["finetuned"], r["name"]))
    if len(pts) < 2:
        return False
    fig, ax = plt.subplots(figsize=(6, 4))
    for kl, score, name in pts:
        ax.scatter([kl], [score])
        ax.annotate(name, (kl, score), textcoords="offset points", xytext=(5, 5), fontsize=8)
    ax.set(
        xlabel="KL to base per token (lower = less forgetting)",
        ylabel=f"task {runs[0]['metric']}",
        title="task score versus retention",
    )
    fig.tight_layout()
    with files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True


def plot_scale(runs: list[dict], path: Path) -> bool:
    """`forgetless tune-scale`'s curve: task score and KL to base against the adapter's scale."""
    sc = [r for r in runs if r["scale"]]
    if len(sc) != 1:
        return False
    t = sc[0]["scale"]
    xs = [p["scale"] for p in t["points"]]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, [p["task"] for p in t["points"]], "o-", color="tab:blue")
    ax.set(xlabel="adapter scale (0 = base, 1 = as trained)", ylabel=f"task {t['metric']}")
    kl = [p["kl_per_token"] for p in t["points"]]
    if None not in kl:
        ax2 = ax.twinx()
        ax2.plot(xs, kl, "s--", color="tab:red")
        ax2.set_ylabel("KL to base / token", color="tab:red")
    ax.axvline(t["chosen"], color="grey", linestyle=":")
    chosen = "per-layer chosen; uniform at the budget" if t.get("layer_scales") else "chosen"
    ax.set_title(f"adapter scale dial ({chosen} {t['chosen']:g})")
    fig.tight_layout()
    with files.replacing(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return True
