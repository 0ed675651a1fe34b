"""The Runs page (status, live curves, progress, stop and resume) and the Report and compare page (a
run's report; several runs on one task-gain vs KL-to-base chart with the table beside it).

The report is the one `forgetless report` writes (eval/report.py), rendered into RUNS/.ui/report/ so that
the run directories stay as training left them.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
import matplotlib

matplotlib.use("Agg")  # figures for the page; never a display
import matplotlib.pyplot as plt

from forgetless.errors import UserError
from forgetless.eval import report
from forgetless.ui import runs

HEAD = ["run", "status", "step", "ETA", "preset", "task before → after", "KL to base / token", "error"]
TERMS_SKIPPED = ("step", "lr", "grad_norm", "epoch", "tokens_per_s", "tokens", "val_loss", "retention_kl")


def _eta(s: float | None) -> str:
    return "" if s is None else f"{int(s) // 60}:{int(s) % 60:02d}"


def _scores(run: Path) -> tuple[str, dict, dict, dict]:
    """(the task metric, its base/fine-tuned/diff, the held-out retention numbers, the KL on the task's
    prompts) from the run's eval.json, read once."""
    r = report.read_run(run)
    ret = r["eval"].get("retention", {})
    task = r["eval"].get("task", {}).get(r["metric"], {})
    return r["metric"], task, ret.get("prompts") or {}, ret.get("task_prompts") or {}


def table(found: list[runs.RunInfo]) -> list[list[str]]:
    rows = []
    for r in found:
        _, task, kept, _ = _scores(r.dir) if r.status == "finished" else ("", {}, {}, {})
        step = f"{r.step}/{r.max_steps}" if r.max_steps else str(r.step)
        before_after = f"{report.fmt(task.get('base'))} → {report.fmt(task.get('finetuned'))}" if task else ""
        kl = report.fmt(kept.get("kl_per_token"), ".4f") if kept else ""
        kl = "not measured" if kept and kept.get("not_measured") else kl
        rows.append([r.name, r.status, step, _eta(r.eta_s), r.summary.get("forgetting_preset", ""), before_after, kl])
        rows[-1].append(r.error if len(r.error) <= 60 else r.error[:57] + "...")  # whole on choosing the run
    return rows


def curves(run: Path):
    """Loss terms and validation loss over steps; the retention probe on its own axis."""
    rows = runs.metrics(run)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.4))
    terms = sorted({k for m in rows for k, v in m.items() if k not in TERMS_SKIPPED and isinstance(v, (int, float))})
    for key in [*terms, "val_loss"]:
        pts = [(m["step"], m[key]) for m in rows if key in m]
        if pts:
            ax1.plot(*zip(*pts, strict=True), "o-" if key == "val_loss" else "-", label=key, linewidth=1, markersize=3)
    probe = [(m["step"], m["retention_kl"]) for m in rows if "retention_kl" in m]
    if probe:
        ax2.plot(*zip(*probe, strict=True), "o-", color="tab:red", linewidth=1, markersize=3)
    ax1.set(xlabel="step", ylabel="loss", title="loss terms and validation loss")
    ax2.set(xlabel="step", ylabel="KL to base / token", title="retention probe (lower = less forgetting)")
    if terms:
        ax1.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)  # Gradio renders the figure object; pyplot need not keep it
    return fig


def detail(root: Path, name: str | None, found: list[runs.RunInfo] | None = None) -> str:
    """The chosen run in words; `found`: the runs a refresh already scanned."""
    if not name:
        return "choose a run"
    chosen = [r for r in (runs.scan(root) if found is None else found) if r.name == name]
    if not chosen:
        return f"no run {name} under {root}"
    r = chosen[0]
    lines = [f"**{r.name}**: {r.status}, step {r.step}" + (f" of {r.max_steps}" if r.max_steps else "")]
    if r.eta_s is not None:
        lines.append(f"ETA of the current phase: {_eta(r.eta_s)}")
    if r.phase:
        lines.append(f"`{r.phase}`")
    if r.error:
        lines.append(f"error: {r.error}")
    if r.status == "finished":
        s = r.summary
        lines.append(
            f"trained {s.get('steps')} steps in {s.get('train_seconds')} s; wall time {s.get('wall_seconds')} s"
        )
    return "\n\n".join(lines)


def _act(fn, root: Path, name: str | None, done: str) -> str:
    if not name:
        return "choose a run"
    try:
        fn(root, name)
    except UserError as e:
        return f"forgetless: error: {e}"
    return done.format(name=name)


def runs_page(root: Path) -> None:
    """The Runs tab: the table, status and curves refreshed on timers (one scan of the folder per refresh)."""
    found = runs.scan(root)
    first = found[0].name if found else None  # the run the page opens on: its detail and curves drawn too
    grid = gr.Dataframe(headers=HEAD, value=table(found), interactive=False, elem_id="runs-table", wrap=True)
    with gr.Row():
        chosen = gr.Dropdown([r.name for r in found], value=first, label="run", elem_id="runs-choice")
        stop_btn = gr.Button("Stop", elem_id="stop-run")
        resume_btn = gr.Button("Resume", elem_id="resume-run")
    # values as functions: computed at each page load, not once when the UI started
    about = gr.Markdown(lambda: detail(root, first) if first else "", elem_id="run-detail")
    plot = gr.Plot(lambda: curves(runs.run_dir(root, first)) if first else None, label="curves", elem_id="run-curves")
    said = gr.Markdown(elem_id="runs-message")

    def refresh(name):
        now = runs.scan(root)
        return gr.update(value=table(now)), gr.update(choices=[r.name for r in now]), detail(root, name, now)

    gr.Timer(2.0).tick(refresh, chosen, [grid, chosen, about])
    gr.Timer(5.0).tick(lambda n: curves(runs.run_dir(root, n)) if n else None, chosen, plot)
    chosen.change(lambda n: (detail(root, n), curves(runs.run_dir(root, n)) if n else None), chosen, [about, plot])
    stop_btn.click(lambda n: _act(runs.stop, root, n, "stopping {name}: it saves a checkpoint first"), chosen, said)
    resume_btn.click(lambda n: _act(runs.resume, root, n, "resumed {name}"), chosen, said)


def tradeoff(root: Path, names: list[str]):
    """Task gain (fine-tuned − base) against KL to base per token, one point per run."""
    fig, ax = plt.subplots(figsize=(6, 4))
    metric = "score"
    for name in names:
        metric, task, kept, _ = _scores(runs.run_dir(root, name))
        if task.get("diff") is not None and kept.get("kl_per_token") is not None:
            ax.scatter([kept["kl_per_token"]], [task["diff"]])
            ax.annotate(name, (kept["kl_per_token"], task["diff"]), textcoords="offset points", xytext=(5, 5))
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set(xlabel="KL to base per token (lower = less forgetting)", ylabel=f"task gain ({metric})")
    ax.set_title("gain versus retention")
    fig.tight_layout()
    plt.close(fig)
    return fig


def compare_rows(root: Path, names: list[str]) -> list[list[str]]:
    rows = []
    for name in names:
        run = runs.run_dir(root, name)
        _, task, kept, on_task = _scores(run)
        preset = runs.info(root, run).summary.get("forgetting_preset", "")
        rows.append(
            [name, preset, f"{report.fmt(task.get('base'))} → {report.fmt(task.get('finetuned'))}"]
            + [report.fmt(task.get("diff"), "+.3f"), report.fmt(kept.get("kl_per_token"), ".4f")]
            + [report.fmt(on_task.get("kl_base_to_tuned"), ".4f"), report.fmt(kept.get("agreement"))]
        )
    return rows


def report_html(root: Path, names: list[str]) -> str:
    """`forgetless report` for the chosen runs, written under RUNS/.ui/report/ and shown inline."""
    if not names:
        return "<p>choose one run for its report, or several to compare them</p>"
    out = runs.ui_dir(root) / "report" / "+".join(sorted(names))[:120]
    _, page = report.write([runs.run_dir(root, n) for n in names], out)
    body = page.read_text(encoding="utf-8")
    inner = body[body.find("<style>") : body.rfind("</body>")].replace("<title>forgetless report</title>", "")
    return inner.replace("body{", "#report-html{", 1)  # the report's page style, kept to the report's box


def finished(root: Path) -> list[str]:
    return [r.name for r in runs.scan(root) if r.status == "finished"]


def report_page(root: Path) -> gr.Dropdown:
    """The Report and compare tab; returns its run chooser (refreshed when the tab is opened)."""
    with gr.Row():
        picked = gr.Dropdown(finished(root), multiselect=True, label="finished runs", elem_id="report-runs")
        show = gr.Button("Show", variant="primary", elem_id="report-show")
    with gr.Row():
        chart = gr.Plot(label="task gain vs KL to base", show_label=False, scale=1)
        head = ["run", "preset", "task base → tuned", "gain", "KL to base / token", "KL(base‖tuned) on task"]
        head += ["unchanged answers"]
        grid = gr.Dataframe(headers=head, interactive=False, elem_id="compare-table", wrap=True, scale=2)
    page = gr.HTML(elem_id="report-html")

    def render(names):
        names = names or []
        return tradeoff(root, names), compare_rows(root, names), report_html(root, names)

    show.click(render, picked, [chart, grid, page])
    return picked
