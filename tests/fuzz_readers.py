"""Fuzz worker for the state-dict readers (run by tests/test_fuzz_readers.py in a fresh process, not a test).

    python tests/fuzz_readers.py FOLDER N SEED

Writes a valid safetensors file and a valid .ckpt, then N seeded mutations of each (bit flips, truncations,
huge offsets, wrong dtypes, overlapping ranges, garbage headers) and reads every one with
`library.files.load_state_dict`. Prints one JSON line: counts of valid reads and one-line errors, any other
exception, the slowest read, and the largest rise of the peak resident memory during one read."""

from __future__ import annotations

import io
import json
import random
import re
import struct
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from library.errors import ToolkitError  # noqa: E402
from library.files import load_state_dict, serialize_safetensors  # noqa: E402

DTYPES = ["F64", "F32", "F16", "BF16", "I64", "I32", "I16", "I8", "U8", "BOOL", "F8_E4M3", "X99", "", 7, None]


def valid_tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"a.weight": torch.randn(512, 1024, generator=g), "b.weight": torch.randn(64, 64, generator=g).half(),
            "c.alpha": torch.tensor(4.0), "d.bias": torch.randint(0, 9, (1024,), generator=g)}


def mutate_header(header: dict, rng: random.Random) -> dict:
    keys = [k for k in header if k != "__metadata__"]
    key = rng.choice(keys)
    entry = dict(header[key])
    kind = rng.randrange(6)
    if kind == 0:
        entry["data_offsets"] = [rng.choice([0, 2**40, 2**63, -5]), rng.choice([2**62, 2**64 + 3, 10, -1])]
    elif kind == 1:
        entry["dtype"] = rng.choice(DTYPES)
    elif kind == 2:
        entry["shape"] = rng.choice([[2**31, 2**31], [-1, 4], [], ["x"], [3.5], None, [10**30]])
    elif kind == 3:  # overlap another tensor's range
        other = header[rng.choice(keys)]["data_offsets"]
        entry["data_offsets"] = [other[0], other[0] + (entry["data_offsets"][1] - entry["data_offsets"][0])]
    elif kind == 4:
        entry = rng.choice([None, 5, "x", [], {"dtype": "F32"}])
    else:
        header["__metadata__"] = rng.choice([{"a": 1}, [1], "x", {"k": "v"}])
        return header
    header[key] = entry
    return header


def mutate_safetensors(data: bytes, rng: random.Random) -> bytes:
    n = int.from_bytes(data[:8], "little")
    kind = rng.randrange(5)
    if kind == 0:  # bit flips anywhere, mostly in the header
        buf = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            pos = rng.randrange(8 + n) if rng.random() < 0.7 else rng.randrange(len(buf))
            buf[pos] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind == 1:
        return data[:rng.randrange(len(data))]
    if kind == 2:  # header length field
        return struct.pack("<Q", rng.choice([0, 1, n + 1, n - 1, 2**63, 2**64 - 1, 100 * 2**20 + 1])) + data[8:]
    if kind == 3:
        header = mutate_header(json.loads(data[8:8 + n]), rng)
        raw = json.dumps(header).encode()
        return struct.pack("<Q", len(raw)) + raw + data[8 + n:]
    return data[:8] + bytes(rng.randrange(256) for _ in range(n)) + data[8 + n:]  # garbage header


def mutate_ckpt(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    kind = rng.randrange(3)
    if kind == 0:
        for _ in range(rng.randint(1, 16)):
            buf[rng.randrange(len(buf))] ^= 1 << rng.randrange(8)
        return bytes(buf)
    if kind == 1:
        return bytes(buf[:rng.randrange(len(buf))])
    start = rng.randrange(len(buf))  # overwrite a run (zip directory, pickle opcodes or data)
    length = rng.randint(1, 64)
    buf[start:start + length] = bytes(rng.randrange(256) for _ in range(length))
    return bytes(buf)


def read(path: Path) -> str:
    try:
        sd, _ = load_state_dict(path)
        for v in sd.values():  # the last element of every tensor can be read (float data is all read already)
            v.reshape(-1)[-1:].tolist()
        return "valid"
    except ToolkitError as e:
        assert "\n" not in str(e), str(e)
        return "error"


def _status(field: str) -> int:
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"{field}:\s+(\d+)", f.read()).group(1)) * 1024


def peak_growth(path: Path) -> tuple[str, int]:
    """(outcome, bytes the peak resident memory rose above the memory in use before the read). Linux resets the
    peak on writing 5 to clear_refs, so each read is measured on its own."""
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")
    before = _status("VmRSS")
    outcome = read(path)
    return outcome, _status("VmHWM") - before


def main() -> None:
    folder, count, seed = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    torch.set_num_threads(1)  # small tensors: threads only add spin-waiting on a busy machine
    sd = valid_tensors()
    st = serialize_safetensors(sd, {"ss_network_dim": "4"})
    buf = io.BytesIO()
    torch.save(sd, buf)
    ck = buf.getvalue()
    for name, data in (("ok.safetensors", st), ("ok.ckpt", ck)):
        (folder / name).write_bytes(data)
        assert read(folder / name) == "valid"
    rng = random.Random(seed)
    result = {"valid": 0, "error": 0, "other": [], "slowest_s": 0.0, "file_bytes": max(len(st), len(ck)),
              "max_peak_growth": 0}
    for i in range(count):
        fmt = ".safetensors" if i % 2 == 0 else ".ckpt"
        data = mutate_safetensors(st, rng) if fmt == ".safetensors" else mutate_ckpt(ck, rng)
        path = folder / f"m{i % 4}{fmt}"
        path.write_bytes(data)
        started = time.perf_counter()
        try:
            outcome, growth = peak_growth(path)
            result[outcome] += 1
            result["max_peak_growth"] = max(result["max_peak_growth"], growth)
        except Exception as e:  # anything but ToolkitError is a defect
            result["other"].append(f"{i}{fmt}: {type(e).__name__}: {str(e)[:200]}")
        result["slowest_s"] = max(result["slowest_s"], time.perf_counter() - started)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
