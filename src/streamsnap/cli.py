"""The ``streamsnap`` command: ``serve``, ``snapshot``, ``plugins``, ``cluster``,
``hash-password``, ``--version``."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
import sys
import urllib.error
import urllib.request
from pathlib import Path

from ._version import __version__
from .core import config as config_mod
from .core.errors import StartupError


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level, logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    from .core.supervisor import MaskSecrets

    for handler in logging.getLogger().handlers:
        handler.addFilter(MaskSecrets())
    for noisy in ("aiohttp.access", "aioice", "aiortc"):  # per-packet/per-check chatter
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger().level))


def _cmd_serve(args: argparse.Namespace) -> int:
    from .core.runtime import serve

    cfg = config_mod.load(args.config)
    _setup_logging(cfg.server.log_level)
    logging.getLogger(__name__).info("streamsnap %s starting with %s", __version__, cfg.source)
    asyncio.run(serve(cfg))
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    from .core.plugins import make_plugin_manager

    cfg = config_mod.load(args.config)
    pm = make_plugin_manager(cfg.plugins)
    infos = pm.describe()
    if args.json:
        print(json.dumps([info.__dict__ for info in infos], indent=2))
        return 0
    width = max((len(i.name) for i in infos), default=4)
    for info in infos:
        print(f"{info.name:<{width}}  {info.version or '-':<8}  {info.source}")
        print(f"{'':<{width}}  hooks: {', '.join(info.hooks) or '-'}")
    return 0


def _cmd_cluster(args: argparse.Namespace) -> int:
    from .plugins.cluster.node import overview
    from .plugins.cluster.settings import ClusterSettings

    cfg = config_mod.load(args.config)
    settings = cfg.declare("cluster", ClusterSettings)
    if not settings.enabled:
        print("streamsnap cluster: [cluster] redis_url is not set in the config", file=sys.stderr)
        return 1
    try:
        seen = asyncio.run(overview(settings.redis_url))
    except (OSError, ConnectionError) as exc:
        print(f"streamsnap cluster: the registry does not answer: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:  # redis-py's errors
        print(f"streamsnap cluster: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(seen, indent=2))
        return 0
    nodes = seen["nodes"]
    print(f"{len(nodes)} node(s), {seen['events']} snapshot event(s) in streamsnap:events")
    for n in nodes:
        live = "live" if n["url"] else "gone (claims expiring)"
        print(f"{n['id']}  {n['url'] or '-'}  {live}  load {n['load'] * 100:.0f} % of a core")
        for name in n["names"]:
            print(f"    {name}")
    return 0


def _cmd_snapshot(args: argparse.Namespace) -> int:
    url = args.server.rstrip("/") + "/rest-api/stream/snapshot"
    body = json.dumps({"streamName": args.name}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=args.timeout) as resp:
            data = base64.b64decode(json.load(resp)["data"])
    except urllib.error.HTTPError as exc:
        try:
            message = json.load(exc).get("message", exc.reason)
        except ValueError:
            message = exc.reason
        print(f"streamsnap snapshot {args.name}: {exc.code} {message}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"streamsnap snapshot: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 1
    out = Path(args.output or f"{_safe_file_name(args.name)}.png")
    out.write_bytes(data)
    print(f"{out} ({len(data)} bytes)")
    return 0


def _cmd_hash_password(args: argparse.Namespace) -> int:
    from .core.auth import hash_password

    if sys.stdin.isatty():
        import getpass

        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            print("streamsnap hash-password: the passwords differ", file=sys.stderr)
            return 1
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        print("streamsnap hash-password: empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def _safe_file_name(name: str) -> str:
    keep = "".join(c if c.isalnum() or c in "-_." else "_" for c in name).strip("._")
    return keep[:100] or "snapshot"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="streamsnap", description=__doc__)
    parser.add_argument("--version", action="version", version=f"streamsnap {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("serve", help="run the server")
    p.add_argument("--config", "-c", help="a .toml or WCS .properties file")
    p.set_defaults(func=_cmd_serve)

    p = sub.add_parser("snapshot", help="save the current frame of a stream as PNG")
    p.add_argument("name", help="stream name")
    p.add_argument("-o", "--output", help="output file (default: NAME.png)")
    p.add_argument("--server", default="http://127.0.0.1:8081", help="REST base URL")
    p.add_argument("--timeout", type=float, default=10.0)
    p.set_defaults(func=_cmd_snapshot)

    p = sub.add_parser("plugins", help="list loaded plugins, their versions and hooks")
    p.add_argument("--config", "-c", help="a .toml or WCS .properties file")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_plugins)

    p = sub.add_parser("cluster", help="list the nodes of the cluster and the streams each holds")
    p.add_argument("--config", "-c", help="a .toml or WCS .properties file with [cluster]")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_cluster)

    p = sub.add_parser(
        "hash-password",
        help="print a password hash for [auth] users (reads the password from stdin or a prompt)",
    )
    p.set_defaults(func=_cmd_hash_password)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except StartupError as exc:
        print(f"streamsnap: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
