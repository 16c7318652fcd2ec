"""`llmkit ui`'s command line: its arguments, the login rule, and the launch of the page (app.py)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from llmkit.config import LlmkitError

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="llmkit ui", description="A web page over llmkit: recipes, runs, evaluation, chat, serving.")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--lang", default=os.environ.get("LLMKIT_UI_LANG", "es"), choices=["es", "en"],
                   help="labels in Spanish (default) or English")
    p.add_argument("--auth", default=os.environ.get("LLMKIT_UI_AUTH"), metavar="USER:PASSWORD",
                   help="require this login (default: $LLMKIT_UI_AUTH); needed to bind anything but 127.0.0.1")
    p.add_argument("--runs", default="runs", help="the runs directory the page reads and writes (default runs/)")
    p.add_argument("--recipes", default="recipes", help="the recipes directory (default recipes/)")
    return p.parse_args(argv)


def check_auth(host: str, auth: str | None) -> tuple[str, str] | None:
    """The login to require: none on 127.0.0.1 (unless given), required elsewhere."""
    if auth is not None:
        user, sep, password = auth.partition(":")
        if not sep or not user or not password:
            raise LlmkitError("--auth must be USER:PASSWORD (both non-empty), e.g. --auth ana:una-clave-larga")
        return user, password
    if host not in LOCAL_HOSTS:
        raise LlmkitError(f"--host {host} makes the page reachable from other machines, and it can start runs: "
                          "add --auth USER:PASSWORD (or set LLMKIT_UI_AUTH), or bind 127.0.0.1")
    return None


def ui_command(argv: list[str]) -> int:
    args = parse_args(argv)
    login = check_auth(args.host, args.auth)
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise LlmkitError("the page needs Gradio: `make setup` installs it (or pip install -e '.[ui]')") from None
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from llmkit.ui.app import build
    from llmkit.ui.jobs import Workspace

    ws = Workspace(Path.cwd(), args.runs, args.recipes)
    ws.runs_root.mkdir(parents=True, exist_ok=True)
    demo = build(ws, args.lang)
    if args.host not in LOCAL_HOSTS:
        print(f"llmkit ui: listening on {args.host}: reachable from other machines, login required", file=sys.stderr, flush=True)
    print(f"llmkit ui: http://{'127.0.0.1' if args.host in ('0.0.0.0', '') else args.host}:{args.port}  "
          f"(runs: {ws.runs_root}; Ctrl-C stops the page, not the runs it started)", flush=True)
    demo.queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port, auth=login, quiet=True,
                                                  allowed_paths=[str(ws.runs_root)], show_error=True, footer_links=[])
    return 0
