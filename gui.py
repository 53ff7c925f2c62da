"""Serve the local web UI: configure and train LoRAs, watch runs (loss, samples, log), run the tools, generate.

    python gui.py                      # http://127.0.0.1:7860, this machine only
    python gui.py --listen --auth me:secret --port 7861

Binds 127.0.0.1 unless --listen; --listen needs --auth or --auth_file. Works offline: nothing the page loads
comes from anywhere but this server (no CDN, web fonts, analytics or update checks).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from library.cli import run_main  # noqa: E402
from library.errors import ToolkitError  # noqa: E402
from library.options.parser import OptionParser  # noqa: E402


def build_parser() -> OptionParser:
    p = OptionParser(prog="gui.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                     allow_abbrev=False)
    p.add_argument("--host", default="127.0.0.1", help="address to bind [127.0.0.1; 0.0.0.0 needs --listen]")
    p.add_argument("--port", type=int, default=None, metavar="N", help="port [7860, or the next free one]")
    p.add_argument("--listen", action="store_true", help="serve other machines (binds 0.0.0.0 unless --host); "
                   "needs --auth or --auth_file")
    p.add_argument("--auth", default=None, metavar="USER:PASSWORD", help="ask for this user and password")
    p.add_argument("--auth_file", default=None, metavar="PATH", help="file of user:password lines")
    p.add_argument("--output_root", default=None, metavar="PATH",
                   help="where the UI keeps its runs and images [output/gui]")
    return p


def read_auth(args: argparse.Namespace) -> list[tuple[str, str]] | None:
    """The user:password pairs of --auth / --auth_file; None when neither is given."""
    if args.auth and args.auth_file:
        raise ToolkitError("--auth and --auth_file exclude each other: give one of them")
    lines: list[str] = []
    if args.auth:
        lines, where = [args.auth], "--auth"
    elif args.auth_file:
        where = f"--auth_file {args.auth_file}"
        try:
            lines = [ln.strip() for ln in Path(args.auth_file).read_text(encoding="utf-8").splitlines()]
        except OSError as e:
            raise ToolkitError(f"{where}: {e.strerror or e}") from None
        lines = [ln for ln in lines if ln and not ln.startswith("#")]
    else:
        return None
    pairs = []
    for ln in lines:
        user, sep, password = ln.partition(":")
        if not sep or not user or not password:
            raise ToolkitError(f"{where}: expected user:password")
        pairs.append((user, password))
    if not pairs:
        raise ToolkitError(f"{where}: no user:password line")
    return pairs


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    auth = read_auth(args)
    host = args.host
    if host not in ("127.0.0.1", "localhost", "::1") and not args.listen:
        raise ToolkitError(f"--host {host}: serving other machines needs --listen (and --auth)")
    if args.listen:
        if auth is None:
            raise ToolkitError("--listen: serving other machines needs --auth user:password or --auth_file")
        if host == "127.0.0.1":
            host = "0.0.0.0"
    from library.gui.app import build_app, launch, make_context  # heavy: gradio

    app = build_app(make_context(args.output_root))
    url = launch(app, host, args.port, auth, block=False)
    print(f"serving {url}", flush=True)
    try:
        app.block_thread()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(run_main(main))
