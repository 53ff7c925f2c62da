"""What every tab of the UI shares (`GuiContext`): where scripts run, where the UI writes, the run manager, and the
only files the page may show: those under the outputs of the UI's own runs and the images it made."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from library.errors import ToolkitError


@dataclass
class ServedFiles:
    """The folders whose files the page may show; anything else is refused (no path typed in a field is served)."""

    roots: list[Path] = field(default_factory=list)
    on_allow: list = field(default_factory=list)  # callbacks (the app tells gradio's file route)

    def allow(self, folder: str | Path) -> Path:
        """Let the page show files under `folder` (a run's output_dir, the UI's own image folder)."""
        path = Path(folder).resolve()
        if path not in self.roots:
            self.roots.append(path)
            for hook in self.on_allow:
                hook(path)
        return path

    def allowed(self, path: str | Path) -> bool:
        real = Path(os.path.realpath(path))
        return any(real == r or r in real.parents for r in self.roots)

    def check(self, path: str | Path) -> str:
        """`path` as a string for a gradio component, if the page may show it; a ToolkitError otherwise."""
        if not self.allowed(path):
            raise ToolkitError(f"{path}: not a file this UI made; only its runs' outputs and images are shown")
        return str(Path(path).resolve())


@dataclass
class GuiContext:
    """Shared by the tabs: `root` (where the scripts are), `output_root` (everything the UI writes goes under it:
    runs/, generate/, tools/), `runs` (the run manager), `served` (files the page may show), `workdir` (where
    scripts run and relative paths typed in fields are read from: the folder gui.py was started in)."""

    root: Path
    output_root: Path
    runs: object  # library.gui.runs.RunManager (kept untyped here so this module imports nothing heavy)
    served: ServedFiles = field(default_factory=ServedFiles)
    workdir: Path = field(default_factory=Path.cwd)

    def output_dir(self, kind: str) -> Path:
        """A folder under output_root for one kind of output (`generate`, `tools`, ...), created, and served."""
        path = self.output_root / kind
        path.mkdir(parents=True, exist_ok=True)
        self.served.allow(path)
        return path

    def script(self, name: str) -> Path:
        """The path of a script of this toolkit (`train_network.py`, `networks/resize_lora.py`)."""
        return self.root / name
