"""DyLoRA training-step cost and split speed, against plain LoRA and a reference of sd-scripts' algorithm.

    python bench/dylora.py [--size real|tiny] [--dim 32] [--unit 4] [--steps 6] [--latent 32] [--threads 1]
                           [--skip_train] [--skip_split]

Training: U-Net-only LoRA-LierLa of `--dim` on a seeded random U-Net (real = SD1.5 shapes), batch 1 at a
`--latent`² latent, AdamW; median CPU seconds (and wall seconds) per step (forward, backward, optimizer step)
after one warm-up step, and peak RSS, each variant in a fresh subprocess (CPU time is the steadier figure on a
shared machine):
  * `lora`      networks.lora (the same targets, plain LoRA);
  * `dylora`    networks.dylora (one draw per step, first k ranks, one parameter per unit);
  * `reference` the sd-scripts algorithm (lora-format.md §8), reimplemented here for comparison only: one
                parameter per rank row, a rank drawn per module per call, requires_grad switched per call,
                all rows multiplied, scale (alpha/dim)·sqrt(dim/(b+unit)).
Split: networks/extract_lora_from_dylora.py on a DyLoRA file of SD1.5 shapes (text encoder + U-Net), against
the reference splitting loop (load all, slice, hash, save each rank).
"""

from __future__ import annotations

import argparse
import math
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _reference_network(unet, dim: int, alpha: float, unit: int):  # noqa: ANN001, ANN202
    """sd-scripts' DyLoRA training algorithm (spec §8), for timing comparison only."""
    import torch
    from torch import nn

    from networks.lora import LoRAModule, LoRANetwork

    class ReferenceModule(LoRAModule):
        def __init__(self, name, org, multiplier, lora_dim, alpha_) -> None:  # noqa: ANN001
            super().__init__(name, org, multiplier, lora_dim, alpha_)
            down, up = self.lora_down.weight.detach(), self.lora_up.weight.detach()
            del self.lora_down, self.lora_up
            self.kxk = isinstance(org, nn.Conv2d) and org.kernel_size != (1, 1)
            self.conv = isinstance(org, nn.Conv2d)
            if not self.kxk:
                down, up = down.reshape(lora_dim, -1), up.reshape(up.shape[0], lora_dim)
            self.lora_A = nn.ParameterList([nn.Parameter(r.unsqueeze(0).clone()) for r in down])
            self.lora_B = nn.ParameterList([nn.Parameter(c.unsqueeze(1).clone()) for c in up.reshape(up.shape[0], -1).T])
            if self.kxk:
                self.stride, self.padding = org.stride, org.padding

        def forward(self, x, *args, **kwargs):  # noqa: ANN001, ANN201
            result = self.org_forward(x, *args, **kwargs)
            b = random.randint(0, self.lora_dim - 1)
            b -= b % unit
            for i in range(self.lora_dim):
                on = b <= i < b + unit
                self.lora_A[i].requires_grad = on
                self.lora_B[i].requires_grad = on
            a = torch.cat(tuple(self.lora_A), dim=0)
            bb = torch.cat(tuple(self.lora_B), dim=1)
            if self.kxk:
                ab = nn.functional.conv2d(nn.functional.conv2d(x, a, stride=self.stride, padding=self.padding),
                                          bb.reshape(*bb.shape, 1, 1))
            else:
                h = x.reshape(x.size(0), x.size(1), -1).transpose(1, 2) if self.conv else x
                h = nn.functional.linear(nn.functional.linear(h, a), bb)
                ab = h.transpose(1, 2).reshape(h.size(0), -1, *x.shape[2:]) if self.conv else h
            return result + ab * self.scale * math.sqrt(self.lora_dim / (b + unit))

    class ReferenceNetwork(LoRANetwork):
        def _new_module(self, name, child, dim_, alpha_):  # noqa: ANN001, ANN202
            return ReferenceModule(name, child, self.multiplier, dim_, alpha_)

    return ReferenceNetwork(None, unet, 1.0, dim, alpha)


def _train_child(variant: str, size: str, dim: int, unit: int, steps: int, latent: int) -> None:
    import torch

    from library.models.factory import random_bundle
    from networks import dylora, lora

    bundle = random_bundle("sd1", size)
    unet = bundle.unet
    del bundle
    if variant == "lora":
        net = lora.create_network(1.0, dim, dim, None, None, unet)
    elif variant == "dylora":
        net = dylora.create_network(1.0, dim, dim, None, None, unet, unit=str(unit))
    else:
        net = _reference_network(unet, dim, dim, unit)
    net.apply_to(None, unet, apply_text_encoder=False)
    net.train()
    unet.train()
    unet.requires_grad_(False)
    params = list(net.parameters())
    optimizer = torch.optim.AdamW(params, 1e-4)
    torch.manual_seed(0)
    random.seed(0)
    x = torch.randn(1, 4, latent, latent)
    ctx = torch.randn(1, 77, unet.config.cross_attention_dim)
    wall, cpu = [], []
    for _ in range(steps + 1):
        t, c = time.perf_counter(), time.process_time()
        out = unet(x, torch.tensor([500]), ctx).sample
        out.square().mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    n_params = sum(p.numel() for p in params)
    print(f"  {variant:<10} {statistics.median(cpu[1:]):7.3f} CPU s/step ({statistics.median(wall[1:]):7.3f} wall)   "
          f"peak RSS {_rss_gib():5.2f} GiB   {len(params):6d} tensors, {n_params / 1e6:5.2f} M params", flush=True)


def _reference_split(model: Path, save_to: Path, unit: int) -> None:
    """sd-scripts' split loop: whole file in memory, slice every rank, hash, save."""
    from library.files import load_state_dict
    from library.lora_io import save_lora

    sd, meta = load_state_dict(model)
    full = max(v.shape[0] for k, v in sd.items() if k.endswith("lora_down.weight"))
    for rank in range(unit, full, unit):
        part = {k: (v[:rank].contiguous() if "lora_down" in k else v[:, :rank].contiguous() if "lora_up" in k else v)
                for k, v in sd.items()}
        new_meta = dict(meta, ss_network_dim=str(rank))
        save_lora(save_to.with_name(f"{save_to.stem}-{rank:04d}{save_to.suffix}"), part, new_meta)


def _split_child(which: str, model: str, unit: int, out: str) -> None:
    t, c = time.perf_counter(), time.process_time()
    if which == "ours":
        from library.dylora_split import split_file

        split_file(model, Path(out) / "split" / "ours.safetensors", unit)
    else:
        _reference_split(Path(model), Path(out) / "split" / "reference.safetensors", unit)
    print(f"  {which:<10} {time.process_time() - c:7.2f} CPU s ({time.perf_counter() - t:6.2f} wall)   "
          f"peak RSS {_rss_gib():5.2f} GiB", flush=True)


def _make_dylora_file(path: Path, dim: int, unit: int) -> None:
    import torch

    from library.models.factory import random_bundle
    from networks import dylora

    bundle = random_bundle("sd1", "real")
    te = bundle.text_encoders[0]
    net = dylora.create_network(1.0, dim, dim, None, te, bundle.unet, unit=str(unit))
    net.apply_to(te, bundle.unet)
    torch.manual_seed(0)
    with torch.no_grad():
        for m in net.text_encoder_loras + net.unet_loras:
            for p in m.lora_up:
                p.normal_(0, 0.01)
    net.save_weights(path, torch.float16, {"ss_network_args": f'{{"unit": "{unit}"}}'})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="real", choices=["real", "tiny"])
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--unit", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--latent", type=int, default=32)
    parser.add_argument("--out", default=str(ROOT / "bench" / "out"))
    parser.add_argument("--variants", default="lora,dylora,reference")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads per run (1 gives steady figures on a shared machine)")
    parser.add_argument("--skip_split", action="store_true")
    parser.add_argument("--skip_train", action="store_true")
    parser.add_argument("--train_child", help=argparse.SUPPRESS)
    parser.add_argument("--split_child", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--make_child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    if args.train_child:
        _train_child(args.train_child, args.size, args.dim, args.unit, args.steps, args.latent)
        return
    if args.split_child:
        _split_child(args.split_child[0], args.split_child[1], args.unit, args.out)
        return
    if args.make_child:
        _make_dylora_file(Path(args.make_child), args.dim, args.unit)
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; SD1 {args.size} U-Net, "
          f"dim {args.dim}, unit {args.unit}, latent {args.latent}x{args.latent}, batch 1")
    common = ["--size", args.size, "--dim", str(args.dim), "--unit", str(args.unit), "--steps", str(args.steps),
              "--latent", str(args.latent), "--out", args.out, "--threads", str(args.threads)]
    if not args.skip_train:
        print("training step (median after one warm-up step):")
        for variant in args.variants.split(","):
            subprocess.run([sys.executable, __file__, *common, "--train_child", variant], check=True)
    if args.skip_split:
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = out / f"dylora-sd1-real-d{args.dim}-u{args.unit}.safetensors"
    if not model.exists():  # in a subprocess: a child started later would inherit this one's peak RSS
        t = time.perf_counter()
        subprocess.run([sys.executable, __file__, *common, "--make_child", str(model)], check=True)
        print(f"wrote {model.name} ({model.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s")
    print(f"split {model.name} ({model.stat().st_size / 2**20:.0f} MiB) into ranks "
          f"{list(range(args.unit, args.dim, args.unit))}:")
    for which in ("ours", "reference"):
        subprocess.run([sys.executable, __file__, *common, "--split_child", which, str(model)], check=True)


if __name__ == "__main__":
    main()
