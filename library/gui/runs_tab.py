"""The Runs tab: the chosen run live (progress, it/s, time left, loss chart, sample images as they are written, log
tail), Stop (as Ctrl-C: the state is saved) and Resume, and the history of past runs. Also wires the Train tab's
Start, which checks the page's command line in-process first (the command line's errors; nothing starts)."""

from __future__ import annotations

import time
from pathlib import Path

import gradio as gr
import pandas as pd

from library.errors import ToolkitError
from library.gui.context import GuiContext
from library.gui.progress_view import WINDOW
from library.gui.runs import FINISHED, RUNNING, STOPPING, Run, RunManager
from library.gui.train_tab import TrainUI, error_text, parse_page

REFRESH_S = 1.5
HISTORY_COLUMNS = ["run", "script", "status", "steps", "final loss", "LoRA files", "started", "config"]


def start_run(ctx: GuiContext, train: TrainUI, values: tuple) -> Run:
    """Check the page's command line with the script's own parser, then queue the run."""
    script, argv = train.argv(values)
    parsed = parse_page(script, argv)
    runs: RunManager = ctx.runs  # type: ignore[assignment]
    return runs.submit(script, argv, parsed.get("output_dir") or ".", parsed.get("output_name") or "last")


def _label(run: Run) -> str:
    started = time.strftime("%m-%d %H:%M", time.localtime(run.created))
    return f"{run.id} · {run.output_name} · {run.status} ({started})"


def _choices(runs: RunManager) -> list[tuple[str, str]]:
    return [(_label(r), r.id) for r in runs.list()]


def history(ctx: GuiContext) -> pd.DataFrame:
    """One row per run: status, steps, final loss (mean of the last steps), LoRA files, config."""
    runs: RunManager = ctx.runs  # type: ignore[assignment]
    rows = []
    for r in runs.list():
        prog = runs.progress(r.id)
        loss = prog.final_loss()
        files = ", ".join(Path(p).name for p in runs.lora_files(r))
        rows.append([r.id, r.script, r.status, prog.step, f"{loss:.4f}" if loss is not None else "", files,
                     time.strftime("%Y-%m-%d %H:%M", time.localtime(r.created)), " ".join(r.argv)])
    return pd.DataFrame(rows, columns=HISTORY_COLUMNS)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return -1


def build_runs_tab(ctx: GuiContext, train: TrainUI, tabs: gr.Tabs) -> None:
    """Build the Runs tab in the current `gr.Tab` context and wire the Train tab's Start to it."""
    runs: RunManager = ctx.runs  # type: ignore[assignment]
    current = runs.current()
    with gr.Row(equal_height=True):
        pick = gr.Dropdown(_choices(runs), value=current.id if current else None, label="run", scale=4,
                           elem_id="run-pick")
        stop = gr.Button("Stop (saves a resumable state)", variant="stop", elem_id="run-stop", scale=1)
        resume = gr.Button("Resume", elem_id="run-resume", scale=1)
    message = gr.Markdown("", elem_id="run-message")
    status = gr.Markdown("", elem_id="run-status")
    # one empty (NaN) point per series: gradio's chart reads the series' type from its first value, and an empty
    # first value would leave the colours unset and draw no lines when the data arrives
    series = ["step loss", f"moving average ({WINDOW})", "validation"]
    empty = pd.DataFrame({"step": [0] * 3, "loss": [float("nan")] * 3, "series": series})
    chart = gr.LinePlot(empty, x="step", y="loss", color="series", title="loss", height=280, elem_id="loss-chart",
                        color_map={"step loss": "#4c78a8", f"moving average ({WINDOW})": "#f58518",
                                   "validation": "#54a24b"})
    samples = gr.Gallery(label="sample images (base at step 0, then as written)", columns=8, height=240,
                         elem_id="run-samples", object_fit="contain")
    with gr.Row():
        log = gr.Textbox("", label="log (tail)", lines=10, max_lines=10, autoscroll=True, interactive=False,
                         elem_id="run-log", scale=3)
        files = gr.Markdown("", elem_id="run-files")
    with gr.Accordion("history of runs", open=False):
        table = gr.Dataframe(history(ctx), interactive=False, wrap=True, elem_id="run-history")
    timer = gr.Timer(REFRESH_S, active=False)  # ticks only while the Runs tab is shown
    seen = gr.State({})  # per page: what it shows already, so an unchanged run sends nothing

    def refresh(run_id: str | None, shown: dict) -> list:
        same = [gr.update()] * 7
        run = runs.get(run_id) if run_id else runs.current()
        if run is None:
            return [*same[:1], "no runs yet: set up a run in the Train tab and press Start", *same[2:], shown]
        prog = runs.progress(run.id)
        log_size = _size(runs.folder(run.id) / "log.txt")
        key = [run.id, run.status, prog.offset, log_size, len(runs.runs)]
        if shown.get("key") == key:
            return [*same, shown]
        text = f"**{run.status}** · {prog.summary(run.status in (RUNNING, STOPPING))}"
        if run.status == "failed":
            text += f"\n\n`{runs.error_line(run.id) or 'the run failed: see the log'}`"
        elif run.status == "queued":
            text = "**queued**: starts when the run in progress ends"
        gallery = gr.update()
        if shown.get("samples") != [run.id, len(prog.samples)]:
            gallery = gr.update(value=[(ctx.served.check(f), c) for f, c in prog.samples if Path(f).is_file()])
        lora = "\n".join(f"- `{p}`" for p in runs.lora_files(run)) or "no LoRA file yet"
        table = history(ctx) if shown.get("runs") != [len(runs.runs), run.status] else gr.update()
        chart_rows = pd.DataFrame(prog.chart_rows(), columns=["step", "loss", "series"])
        shown = {"key": key, "samples": [run.id, len(prog.samples)], "runs": [len(runs.runs), run.status]}
        return [gr.update(choices=_choices(runs)), text, chart_rows, gallery, runs.log_tail(run.id),
                f"**LoRA files**\n\n{lora}", table, shown]

    outputs = [pick, status, chart, samples, log, files, table, seen]
    timer.tick(refresh, inputs=[pick, seen], outputs=outputs, show_progress="hidden", queue=False)
    pick.input(lambda run_id: refresh(run_id, {}), inputs=[pick], outputs=outputs, show_progress="hidden")

    def on_tab(evt: gr.SelectData) -> gr.Timer:
        return gr.Timer(active=evt.value == "Runs")

    tabs.select(on_tab, outputs=[timer], queue=False)

    def on_start(*values: object) -> list:
        try:
            run = start_run(ctx, train, values)
        except (ToolkitError, OSError) as e:
            return [error_text(e), gr.update(), gr.update(), "", gr.update()]
        return ["", gr.Tabs(selected="runs"), gr.update(choices=_choices(runs), value=run.id),
                f"started run {run.id}: `{run.script}.py {' '.join(run.argv)}`", gr.Timer(active=True)]

    train.start.click(on_start, inputs=train.inputs(), outputs=[train.error, tabs, pick, message, timer])

    def on_stop(run_id: str | None) -> str:
        run = runs.get(run_id) if run_id else runs.current()
        if run is None or run.status in FINISHED:
            return "nothing to stop"
        runs.stop(run.id)
        return f"stopping {run.id}: it finishes its step and saves a resumable state"

    stop.click(on_stop, inputs=[pick], outputs=[message], queue=False)  # at once, not behind a queued event

    def on_resume(run_id: str | None) -> list:
        try:
            run = runs.resume(run_id or "")
        except ToolkitError as e:
            return [error_text(e), gr.update()]
        return [f"resumed as {run.id}: `--resume {run.argv[-1]}`", gr.update(choices=_choices(runs), value=run.id)]

    resume.click(on_resume, inputs=[pick], outputs=[message, pick])
