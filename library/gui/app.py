"""The UI's page: four tabs (Train, Runs, Tools, Generate) over one `GuiContext`. Offline by construction: no
analytics, no update check, no web fonts, no CDN (the theme uses system fonts; `gui.py` sets the environment
before gradio is imported)."""

from __future__ import annotations

import os
from pathlib import Path

# before gradio is imported anywhere: no telemetry, no version check
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import gradio as gr  # noqa: E402

from library.gui.context import GuiContext  # noqa: E402
from library.gui.forms import FORM_CSS  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TITLE = "sd-lora-toolkit"
CSS = """
.opt-field .info, .opt-field span[data-testid='block-info'] + div { font-size: 0.8em; }
#error-box { min-height: 0 !important; padding: 0 !important; }
#error-box p { color: #b00020; font-family: ui-monospace, monospace; white-space: pre-wrap; }
#cmd-preview textarea { font-family: ui-monospace, monospace; font-size: 0.85em; }
footer { display: none !important; }
.mono textarea { font-family: ui-monospace, monospace; font-size: 0.85em; }
""" + FORM_CSS


def theme() -> gr.themes.Base:
    """The default look with system fonts only (gradio's Google-font themes would fetch fonts from the web)."""
    return gr.themes.Default(font=["system-ui", "Segoe UI", "Helvetica", "Arial", "sans-serif"],
                             font_mono=["ui-monospace", "Consolas", "monospace"])


def make_context(output_root: str | Path | None = None, root: str | Path = ROOT) -> GuiContext:
    """The shared state of one server: scripts under `root`, everything the UI writes under `output_root`."""
    from library.gui.runs import RunManager

    root = Path(root).resolve()
    out = Path(output_root).resolve() if output_root else root / "output" / "gui"
    out.mkdir(parents=True, exist_ok=True)
    ctx = GuiContext(root=root, output_root=out, runs=None)
    ctx.runs = RunManager(ctx)
    return ctx


def build_app(ctx: GuiContext | None = None) -> gr.Blocks:
    """The page: Train, Runs, Tools and Generate tabs over one context (made with `make_context()` if None)."""
    from library.gui.generate_tab import build_generate_tab
    from library.gui.runs_tab import build_runs_tab
    from library.gui.tools_tab import build_tools_tab
    from library.gui.train_tab import build_train_tab

    ctx = ctx or make_context()
    with gr.Blocks(title=TITLE, analytics_enabled=False) as app:
        gr.Markdown(f"## {TITLE}: train LoRAs, watch the runs, run the tools")
        with gr.Tabs(elem_id="main-tabs") as tabs:
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train = build_train_tab(ctx)
            with gr.Tab("Runs", id="runs", elem_id="tab-runs"):
                build_runs_tab(ctx, train, tabs)
            with gr.Tab("Tools", id="tools", elem_id="tab-tools"):
                build_tools_tab(ctx)
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                build_generate_tab(ctx)
    app.ctx = ctx  # type: ignore[attr-defined]
    return app


def launch(app: gr.Blocks, host: str, port: int | None, auth: list[tuple[str, str]] | None,
           block: bool = True) -> str:
    """Serve the page; returns its URL. Files are served only from the UI's own outputs (`ctx.served`)."""
    ctx: GuiContext = app.ctx  # type: ignore[attr-defined]
    _patient_url_check()
    app.queue(default_concurrency_limit=4)
    _, url, _ = app.launch(server_name=host, server_port=port, auth=auth, prevent_thread_lock=True,
                           quiet=True, show_error=True, ssr_mode=False, theme=theme(), css=CSS,
                           allowed_paths=[str(p) for p in ctx.served.roots], footer_links=[])
    ctx.served.on_allow.append(lambda path: app.allowed_paths.append(str(path)))
    if block:
        app.block_thread()
    return url


def _patient_url_check(seconds: float = 60) -> None:
    """gradio's launch checks its own URL and gives up when 5 HEAD requests of 3 s fail, which a busy machine
    (a training run beside it) can exceed: wait up to `seconds` (the server is the same; only the patience)."""
    import time

    import httpx
    from gradio import networking

    def url_ok(url: str) -> bool:
        end = time.time() + seconds
        while time.time() < end:
            try:
                if httpx.head(url, timeout=20).status_code in (200, 401, 301, 302, 303, 307, 308):  # as gradio's
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        return False

    networking.url_ok = url_ok
