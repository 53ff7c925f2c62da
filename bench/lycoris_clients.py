"""Do ComfyUI and A1111 apply our LoHa/LoKr/DoRA files as we do? Module by module, with their own load code.

    python bench/lycoris_clients.py --comfy PATH/TO/ComfyUI --a1111 PATH/TO/stable-diffusion-webui [--family sdxl]

For every variant (LoHa flat/Tucker, LoKr factor −1/8, decompose_both, full matrix, Tucker W2, Tucker LoCon, DoRA
on LoCon/LoHa/LoKr on both axes) a file in LyCORIS' layout is written for a tiny seeded checkpoint (or read with
--files), and every module's W' − W is computed three ways in float64: `library.adapters.apply_delta`, ComfyUI's
`comfy.weight_adapter` adapters (`load` + `calculate_weight`, as `comfy/lora.py` calls them) and A1111's
`extensions-builtin/Lora` module types (`create_module` + `calc_updown`, with stub `modules.*`). Only load code is
imported: no UI, no model loading. Prints, per variant and strength, the largest relative difference
‖ΔW_client − ΔW_ours‖/‖ΔW_ours‖ over the modules, and the modules a client failed on (Comfy logs and skips).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

VARIANTS = {
    "LoHa flat": dict(algo="loha", dim=4, alpha=2.0, conv=True),
    "LoHa Tucker": dict(algo="loha", dim=4, alpha=2.0, conv=True, tucker=True),
    "LoKr f-1": dict(algo="lokr", dim=2, alpha=1.0, factor=-1, conv=True),
    "LoKr f8": dict(algo="lokr", dim=2, alpha=1.0, factor=8, conv=True),
    "LoKr decompose_both": dict(algo="lokr", dim=1, alpha=0.5, factor=-1, decompose_both=True, conv=True),
    "LoKr full (alpha 1e5)": dict(algo="lokr", dim=100000, factor=4, conv=True),
    "LoKr Tucker W2": dict(algo="lokr", dim=2, alpha=1.0, factor=4, conv=True, tucker=True),
    "LoCon Tucker": dict(algo="locon", dim=4, alpha=2.0, conv=True, tucker=True),
    "DoRA LoCon in": dict(algo="locon", dim=4, alpha=4.0, conv=True, dora="in"),
    "DoRA LoCon out": dict(algo="locon", dim=4, alpha=4.0, conv=True, dora="out"),
    "DoRA LoHa in": dict(algo="loha", dim=4, alpha=4.0, dora="in"),
    "DoRA LoHa out": dict(algo="loha", dim=4, alpha=4.0, dora="out"),
    "DoRA LoKr in": dict(algo="lokr", dim=2, alpha=2.0, factor=4, dora="in"),
    "DoRA LoKr out": dict(algo="lokr", dim=2, alpha=2.0, factor=4, dora="out"),
    "DoRA LoCon in, alpha≠r": dict(algo="locon", dim=4, alpha=1.0, dora="in"),
}


class ErrorLog(logging.Handler):
    """Collects ComfyUI's ERROR lines: it logs a failed module and leaves the layer unpatched."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


def load_comfy(path: Path):  # noqa: ANN201 - the comfy.weight_adapter module
    sys.path.insert(0, str(path))
    sys.argv = [sys.argv[0], "--cpu"]  # ComfyUI parses the command line on import
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.weight_adapter

    return comfy.weight_adapter


def load_a1111(path: Path) -> list:
    """A1111's LoRA module types in its own order, on stub `modules` (devices, shared, ...)."""
    mods = {name: types.ModuleType(name) for name in ("modules", "modules.devices", "modules.shared", "modules.sd_models",
                                                      "modules.hashes", "modules.cache", "modules.errors")}
    mods["modules.devices"].cpu = torch.device("cpu")
    mods["modules.devices"].device = torch.device("cpu")
    mods["modules.devices"].dtype = torch.float64
    for name, m in mods.items():
        sys.modules[name] = m
        if "." in name:
            setattr(mods["modules"], name.split(".")[1], m)
    sys.path.insert(0, str(path / "extensions-builtin" / "Lora"))
    import network_hada
    import network_lokr
    import network_lora

    return [network_lora.ModuleTypeLora(), network_hada.ModuleTypeHada(), network_lokr.ModuleTypeLokr()]


def comfy_delta(wa, name: str, tensors: dict, w: torch.Tensor, s: float, errors: ErrorLog) -> torch.Tensor | None:  # noqa: ANN001
    sd = {f"{name}.{k}": v for k, v in tensors.items()}
    alpha = float(tensors["alpha"]) if "alpha" in tensors else None
    before = len(errors.lines)
    for adapter in wa.adapters:
        ad = adapter.load(name, sd, alpha, tensors.get("dora_scale"), set())
        if ad is not None:
            out = ad.calculate_weight(w.clone(), name, s, 1.0, None, lambda t: t, torch.float64)
            return None if len(errors.lines) > before else out - w
    return None


def a1111_delta(module_types: list, name: str, tensors: dict, w: torch.Tensor, s: float) -> torch.Tensor | None:
    import network

    layer = torch.nn.Linear(w.shape[1], w.shape[0], bias=False) if w.ndim == 2 else \
        torch.nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), padding=w.shape[2] // 2, bias=False)
    layer = layer.double()
    layer.weight.data = w.clone()
    net = network.Network(name)
    net.te_multiplier = s
    net.unet_multiplier = [s] * 3
    sd_key = ("transformer_" if name.startswith("lora_te") else "diffusion_model_") + name
    weights = network.NetworkWeights(network_key=name, sd_key=sd_key, w=dict(tensors), sd_module=layer)
    for mt in module_types:
        mod = mt.create_module(net, weights)
        if mod is not None:
            updown, _ = mod.calc_updown(w)
            return updown.reshape(w.shape)
    return None


def compare(ckpt: Path, files: dict[str, Path], wa, module_types: list, errors: ErrorLog) -> list[str]:  # noqa: ANN001
    import library.adapters as A
    from library.files import load_state_dict
    from library.keys import checkpoint_targets, detect_family
    from library.merge import tensor_shapes

    base, _ = load_state_dict(ckpt)
    targets = checkpoint_targets(tensor_shapes(base), detect_family(tensor_shapes(base)))
    rows = []
    for label, path in files.items():
        modules = A.group_modules(load_state_dict(path)[0])
        for s in (1.0, 0.5):
            worst = {"comfy": 0.0, "a1111": 0.0}
            failed = {"comfy": 0, "a1111": 0}
            for name, tensors in modules.items():
                t = targets[name]
                w = base[t.key].double()
                w = (w[t.rows[0]:t.rows[1]] if t.rows else w).contiguous()
                m64 = {k: v.double() for k, v in tensors.items()}
                ours = A.apply_delta(w, m64, s) - w
                for client in ("comfy", "a1111"):
                    try:
                        got = comfy_delta(wa, name, m64, w, s, errors) if client == "comfy" else \
                            a1111_delta(module_types, name, m64, w, s)
                    except Exception:  # noqa: BLE001 - a client's crash counts as a failed module
                        got = None
                    if got is None:
                        failed[client] += 1
                        continue
                    rel = float((got.reshape(ours.shape) - ours).norm() / ours.norm().clamp(min=1e-300))
                    worst[client] = max(worst[client], rel)
            cells = [f"{worst[c]:.1e}" + (f" ({failed[c]} failed)" if failed[c] else "") for c in ("comfy", "a1111")]
            rows.append(f"| {label} | {s:g} | {len(modules)} | {cells[0]} | {cells[1]} |")
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--comfy", type=Path, required=True, help="ComfyUI checkout (its comfy/ package is imported)")
    p.add_argument("--a1111", type=Path, required=True,
                   help="stable-diffusion-webui checkout (extensions-builtin/Lora is imported)")
    p.add_argument("--family", choices=["sd1", "sdxl"], default="sd1")
    args = p.parse_args()
    torch.set_num_threads(1)
    from library.lora_io import save_lora
    from library.models.factory import write_random_checkpoint
    from library.random_lora import random_lycoris

    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    wa, module_types = load_comfy(args.comfy), load_a1111(args.a1111)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = write_random_checkpoint(Path(tmp) / f"tiny-{args.family}.safetensors", args.family)
        files = {}
        for i, (label, kw) in enumerate(VARIANTS.items()):
            files[label] = Path(tmp) / f"v{i}.safetensors"
            save_lora(files[label], random_lycoris(ckpt, seed=i, std=0.2, **kw), {"ss_network_module": "lycoris.kohya"})
        rows = compare(ckpt, files, wa, module_types, errors)
    print(f"family {args.family}; max relative difference to ours over the modules (float64)")
    print("| variant | strength | modules | ComfyUI | A1111 |\n|---|---|---|---|---|")
    print("\n".join(rows))
    if errors.lines:
        print(f"ComfyUI logged {len(errors.lines)} errors, e.g.: {errors.lines[0][:160]}")


if __name__ == "__main__":
    main()
