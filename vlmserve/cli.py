"""``vlmserve``: argv → settings → the server or a tool. Nothing else lives here."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from vlmserve import __version__


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmserve", description=__doc__)
    parser.add_argument("--version", action="version", version=f"vlmserve {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the API server")
    serve.add_argument("--model", help="bind every catalogue entry to this hub id or directory")
    _upstream_arguments(serve)
    serve.add_argument("--host", help="address to bind (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default 8000)")
    serve.add_argument("--config", type=Path, help="a TOML settings file")
    serve.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    serve.add_argument(
        "--log-format", choices=["text", "json"], help="json: one object per line (log shippers)"
    )

    models = sub.add_parser("models", help="print the catalogue: limits and engine bindings")
    models.add_argument("--config", type=Path, help="a TOML settings file")
    models.add_argument("--model", help="as for serve")
    _upstream_arguments(models)

    inspect = sub.add_parser(
        "inspect-image", help="what the model will see of an image and what it will cost"
    )
    inspect.add_argument("source", help="a file path, an http(s) URL or a data: URL")
    inspect.add_argument(
        "--model", help="a catalogue model or a model directory (for sizing and tokens)"
    )
    inspect.add_argument("--detail", choices=["low", "high", "auto"], default="auto")
    inspect.add_argument("--save", type=Path, help="write the model-ready image here (PNG)")
    inspect.add_argument("--config", type=Path, help="a TOML settings file")

    dummy = sub.add_parser("make-dummy-model", help="write a random-weight model directory offline")
    dummy.add_argument("path", type=Path)
    dummy.add_argument("--family", default="idefics3", help="transformers model_type")
    dummy.add_argument("--shape", default="tiny", help="tiny (tests) or a real model's shape")
    dummy.add_argument("--seed", type=int, default=0)
    _keys_arguments(sub)
    usage = sub.add_parser("usage", help="token usage totals from the ledger")
    usage.add_argument("--key", metavar="NAME", help="only this key's usage")
    usage.add_argument("--since", metavar="DATE", help="from this day (YYYY-MM-DD, UTC)")
    usage.add_argument("--by", choices=["day", "model", "key"], help="one total per group")
    usage.add_argument("--config", type=Path, help="a TOML settings file")
    return parser


def _keys_arguments(sub: Any) -> None:
    keys = sub.add_parser("keys", help="API keys: create, list, revoke").add_subparsers(
        dest="keys_command", required=True
    )
    create = keys.add_parser("create", help="make a key; it is printed once, only its hash kept")
    create.add_argument("--name", required=True, help="who or what uses it (unique while live)")
    create.add_argument("--tier", help="V0-V5 or a tier from the settings (default: the default)")
    create.add_argument("--quota", type=int, metavar="TOKENS", help="tokens it may use in all")
    create.add_argument("--admin", action="store_true", help="may read /v1/usage and /metrics")
    listing = keys.add_parser("list", help="the keys (never the keys themselves)")
    listing.add_argument("--all", action="store_true", help="revoked keys too")
    revoke = keys.add_parser("revoke", help="stop a key from working (within seconds)")
    revoke.add_argument("name", help="the key's name or id")
    for parser in (create, listing, revoke):
        parser.add_argument("--config", type=Path, help="a TOML settings file")


def _upstream_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--upstream",
        action="append",
        metavar="URL",
        help="an OpenAI-compatible replica (vLLM, SGLang, vlmserve) serving the model, by its "
        "base URL (http://10.0.0.5:8000/v1); repeat for more replicas. Every catalogue entry "
        "then runs there, and --model only supplies the processor and tokenizer (no weights)",
    )
    parser.add_argument(
        "--upstream-model",
        metavar="NAME",
        help="the model name the replicas serve (default: --model)",
    )


def _settings(args: argparse.Namespace) -> Any:
    from vlmserve.settings import load_settings

    overrides: dict[str, dict[str, Any]] = {}
    names = ("host", "port", "log_level", "log_format")
    server = {k: v for k in names if (v := getattr(args, k, None))}
    if server:
        overrides["server"] = server
    catalog: dict[str, Any] = {}
    if getattr(args, "model", None):
        catalog["model"] = args.model
    if getattr(args, "upstream", None):
        catalog["upstreams"] = tuple(args.upstream)
    if getattr(args, "upstream_model", None):
        catalog["upstream_model"] = args.upstream_model
    if catalog:
        overrides["catalog"] = catalog
    return load_settings(args.config, **overrides)


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from vlmserve.api.app import create_app
    from vlmserve.api.logs import configure_logging
    from vlmserve.api.services import check_models
    from vlmserve.errors import ModelUnavailableError

    settings = _settings(args)
    configure_logging(settings.server.log_level, settings.server.log_format)
    try:
        check_models(settings)
    except ModelUnavailableError as exc:
        print(exc.message, file=sys.stderr)
        return 1
    if settings.server.log_level != "debug":
        # httpx logs every call to a replica (requests, health checks) at info: noise beside the
        # one line per request TraceMiddleware writes, and a cost on the remote hot path.
        logging.getLogger("httpx").setLevel(logging.WARNING)
    app = create_app(settings)
    uvicorn.run(
        app,
        host=settings.server.host,
        port=settings.server.port,
        log_level=settings.server.log_level,
        access_log=False,  # TraceMiddleware logs one line per request, with its trace id
        # json: uvicorn's own lines go through the root logger's JSON formatter too.
        log_config=None if settings.server.log_format == "json" else uvicorn.config.LOGGING_CONFIG,
    )
    return 0


def _keys(args: argparse.Namespace) -> int:
    from vlmserve.api import admin

    settings = _settings(args)
    if args.keys_command == "create":
        record, key = admin.create_key(settings, args.name, args.tier, args.quota, args.admin)
        print(json.dumps({**record, "key": key}))
        print(f"Store this key now: it is not shown again.\n{key}", file=sys.stderr)
    elif args.keys_command == "list":
        for row in admin.list_keys(settings, args.all):
            print(json.dumps(row))
    else:
        print(json.dumps(admin.revoke_key(settings, args.name)))
    return 0


def _usage(args: argparse.Namespace) -> int:
    from vlmserve.api import admin

    for row in admin.usage_totals(_settings(args), args.key, args.since, args.by):
        print(json.dumps(row))
    return 0


def _models(args: argparse.Namespace) -> int:
    from vlmserve.api.services import token_counts
    from vlmserve.catalog.registry import catalog_from_settings

    settings = _settings(args)
    catalog = catalog_from_settings(settings.catalog, settings.engine)
    for spec in catalog:
        row: dict[str, Any] = {
            "id": spec.id,
            "context_window": spec.context_window,
            "input_modalities": list(spec.input_modalities),
            "max_images": spec.max_images,
            "default_detail": spec.default_detail,
            "max_image_side": spec.max_image_side,
            "max_image_bytes": spec.max_image_bytes,
            "engine": spec.binding.kind,
            "model": spec.binding.model,
            "dtype": spec.binding.dtype,
            "device": spec.binding.device,
            "token_counts": token_counts(spec.binding),
        }
        if spec.binding.kind == "remote":
            row["upstreams"] = list(spec.binding.upstreams)
            row["upstream_model"] = spec.binding.upstream_model
        print(json.dumps(row))
    return 0


def _make_dummy_model(args: argparse.Namespace) -> int:
    from vlmserve.dummy import make_dummy_model

    try:
        path = make_dummy_model(args.path, args.family, args.shape, seed=args.seed)
    except ValueError as exc:
        print(f"vlmserve make-dummy-model: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


def _inspect_image(args: argparse.Namespace) -> int:
    import asyncio

    from vlmserve.errors import VlmserveError

    try:
        report = asyncio.run(_inspect(args))
    except VlmserveError as exc:
        print(f"vlmserve inspect-image: {exc.message}", file=sys.stderr)
        return 2
    except OSError as exc:  # no such file, or the model's processor files are not on this machine
        print(f"vlmserve inspect-image: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report))
    return 0


async def _inspect(args: argparse.Namespace) -> dict[str, Any]:
    import asyncio

    from vlmserve.catalog.registry import catalog_from_settings
    from vlmserve.catalog.spec import ModelSpec
    from vlmserve.media.intake import MediaIntake, inspect_image
    from vlmserve.media.types import ImagePolicy

    settings = _settings(argparse.Namespace(config=args.config))
    catalog = catalog_from_settings(settings.catalog, settings.engine)
    names = {spec.id for spec in catalog}
    spec: ModelSpec = catalog.get(args.model) if args.model in names else next(iter(catalog))
    directory = spec.binding.model if args.model in names else args.model
    preparer, edges = _processor(directory) if directory else (None, None)
    policy = ImagePolicy(
        max_images=spec.max_images,
        max_side=spec.max_image_side,
        max_total_bytes=spec.max_image_bytes,
        default_detail=spec.default_detail,
        low_longest_edge=edges[0] if edges else None,
        high_longest_edge=edges[1] if edges else None,
        downscale_oversized=settings.media.downscale_oversized,
    )
    source = args.source
    if "://" not in source and not source.startswith("data:"):
        data = await asyncio.to_thread(Path(source).read_bytes)
    else:
        intake = MediaIntake(settings.media)
        try:
            data = await intake.read_image_bytes(source, policy)
        finally:
            await intake.close()
    prepared, report = inspect_image(data, policy, args.detail, settings.media)
    report["tokens"] = _image_tokens(preparer, prepared) if preparer else None
    if args.save:
        prepared.image.save(args.save, "PNG")
        report["saved"] = str(args.save)
    return report


def _processor(directory: str) -> tuple[Any, tuple[int, int] | None]:
    from vlmserve.engine.local.counter import load_preparer

    preparer, family = load_preparer(Path(directory))
    return preparer, family.image_edges()


def _image_tokens(preparer: Any, prepared: Any) -> int:
    from vlmserve.engine.types import MediaInput, MediaPart, Message, Prompt

    image = MediaInput("image", (prepared.image,), prepared.identity)
    prompt = Prompt((Message("user", (MediaPart(0),)),), (image,))
    return int(preparer.prepare(prompt).usage.image_tokens)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    commands = {
        "serve": _serve,
        "models": _models,
        "make-dummy-model": _make_dummy_model,
        "inspect-image": _inspect_image,
        "keys": _keys,
        "usage": _usage,
    }
    from vlmserve.errors import VlmserveError

    try:
        return commands[args.command](args)
    except (FileNotFoundError, ValueError) as exc:  # bad settings or config file
        print(f"vlmserve {args.command}: {exc}", file=sys.stderr)
        return 2
    except VlmserveError as exc:  # keys/usage: a bad name, tier or date
        print(f"vlmserve {args.command}: {exc.message}", file=sys.stderr)
        return 2
