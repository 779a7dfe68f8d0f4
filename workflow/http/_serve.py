"""Serving an application with uvicorn: ``python -m workflow.http --app MODULE:ATTR`` (the
CLI's ``serve`` runs the same :func:`serve_main`)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import uvicorn

__all__ = ["build_parser", "serve", "serve_main"]


def serve(
    app: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    factory: bool = False,
    root_path: str = "",
    proxy_headers: bool = False,
    forwarded_allow_ips: str | None = None,
    log_level: str = "info",
    app_dir: str = ".",
) -> None:
    """Serve ``app`` ("MODULE:ATTR": an ASGI application, e.g. one ``make_app`` returned, or
    with ``factory`` a function returning one) until SIGINT/SIGTERM; the application's
    lifespan runs its workflows when it was made with ``run_workflows=True``.

    ``proxy_headers``: trust ``X-Forwarded-For``/``X-Forwarded-Proto`` from the addresses in
    ``forwarded_allow_ips`` (a reverse proxy terminating TLS); ``root_path``: the path prefix
    the proxy serves the API under."""
    if app_dir and app_dir not in sys.path:
        sys.path.insert(0, os.path.abspath(app_dir))
    uvicorn.run(
        app,
        host=host,
        port=port,
        factory=factory,
        root_path=root_path,
        proxy_headers=proxy_headers,
        forwarded_allow_ips=forwarded_allow_ips,
        log_level=log_level,
        server_header=False,
    )


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """The ``serve`` options, added to ``parser`` (a CLI's sub-command) or a new one."""
    p = parser or argparse.ArgumentParser(
        prog="python -m workflow.http", description="Serve the workflow HTTP API (uvicorn)."
    )
    p.add_argument("--app", required=True, help="MODULE:ATTR of the ASGI application")
    p.add_argument("--factory", action="store_true", help="ATTR is a function making the app")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--root-path", default="", help="path prefix behind a reverse proxy")
    p.add_argument(
        "--proxy-headers",
        action="store_true",
        help="trust X-Forwarded-* headers from --forwarded-allow-ips",
    )
    p.add_argument(
        "--forwarded-allow-ips",
        default=None,
        help="comma-separated proxy addresses to trust (default: 127.0.0.1)",
    )
    p.add_argument("--log-level", default="info")
    p.add_argument("--app-dir", default=".", help="put this directory on sys.path first")
    return p


def serve_main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    serve(
        args.app,
        host=args.host,
        port=args.port,
        factory=args.factory,
        root_path=args.root_path,
        proxy_headers=args.proxy_headers,
        forwarded_allow_ips=args.forwarded_allow_ips,
        log_level=args.log_level,
        app_dir=args.app_dir,
    )
