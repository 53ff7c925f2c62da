"""`--network_module NAME` -> the Python module, for training, `--base_weights` and generation alike.

`lycoris.kohya` (the LyCORIS plug-in sd-scripts configs name) is the installed lycoris-lora package when there is
one, otherwise this toolkit's native `networks.lycoris` (same network_args, files LyCORIS reads); one log line
says which. `LORA_TOOLKIT_LYCORIS=native` picks the native module even when the package is installed.
"""

from __future__ import annotations

import importlib
import logging
import os
from types import ModuleType

from library.errors import ToolkitError

log = logging.getLogger(__name__)

LYCORIS_PLUGIN = "lycoris.kohya"
NATIVE_LYCORIS = "networks.lycoris"
ENV = "LORA_TOOLKIT_LYCORIS"


def _lycoris_plugin() -> tuple[ModuleType | None, str]:
    """The installed plug-in, or None and why not."""
    if os.environ.get(ENV, "").strip().lower() == "native":
        return None, f"{ENV}=native"
    try:
        module = importlib.import_module(LYCORIS_PLUGIN)
    except ImportError as e:
        return None, "lycoris-lora is not installed" if getattr(e, "name", "") == "lycoris" else str(e)
    except Exception as e:  # a broken installation: the native module still trains  # noqa: BLE001
        return None, f"lycoris-lora does not import ({str(e).splitlines()[0][:120]})"
    return module, ""


def import_network_module(name: str | None, option: str = "--network_module") -> ModuleType:
    """Import a network module by name (default networks.lora), resolving `lycoris.kohya` as described above."""
    name = name or "networks.lora"
    if name == LYCORIS_PLUGIN:
        module, why = _lycoris_plugin()
        if module is not None:
            from importlib.metadata import PackageNotFoundError, version

            try:
                ver = version("lycoris-lora")
            except PackageNotFoundError:
                ver = "?"
            log.info("%s %s: using the installed lycoris-lora %s (%s=native for this toolkit's %s)", option,
                     name, ver, ENV, NATIVE_LYCORIS)
            return module
        log.info("%s %s: %s; using this toolkit's native %s (same network_args and files)", option, name, why,
                 NATIVE_LYCORIS)
        name = NATIVE_LYCORIS
    try:
        return importlib.import_module(name)
    except ImportError as e:
        raise ToolkitError(f"{option} {name}: cannot import it ({e})") from None
