"""The `slm-server` command line: serve | gateway | worker | registry check | bench | compare."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from server.errors import RegistryError
from server.logs import setup_logging
from server.registry import Registry, check_files, check_key_envs, load_registry
from server.security import ApiKeyConfigError, ApiKeys
from server.settings import Settings

log = logging.getLogger("slm")


def _load(settings: Settings) -> Registry | None:
    try:
        registry = load_registry(settings.registry)
    except RegistryError as exc:
        log.error("invalid registry:\n%s", exc)
        return None
    problems = check_key_envs(registry, settings.provider_key_env_pattern)
    problems += check_files(registry, registry_dir=settings.registry.resolve().parent,
                            model_dirs=settings.model_dir_list())
    if problems:
        log.error("invalid registry:\n%s", "\n".join(f"{settings.registry}: {p}" for p in problems))
        return None
    return registry


def build_parser() -> argparse.ArgumentParser:
    # Global options are accepted before the subcommand and after it (`slm-server serve --registry F`):
    # the subcommands share this parent, whose default SUPPRESS keeps an option given before the
    # subcommand from being overwritten by the subparser's unset default.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--registry", type=Path, default=argparse.SUPPRESS,
                        help="model_registry.yaml (env SLM_REGISTRY)")
    parser = argparse.ArgumentParser(prog="slm-server", description=__doc__, parents=[common])
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, parents=[common], description=help_text)

    serve = add("serve", "embedded Redis + gateway + workers, all on this machine")
    serve.add_argument("--host", help="address the gateway listens on (env SLM_HOST)")
    serve.add_argument("--port", type=int, help="port the gateway listens on (env SLM_PORT)")

    gateway = add("gateway", "the HTTP gateway alone (needs SLM_REDIS_URL)")
    gateway.add_argument("--host", help="address the gateway listens on (env SLM_HOST)")
    gateway.add_argument("--port", type=int, help="port the gateway listens on (env SLM_PORT)")

    worker = add("worker", "one worker process for one local model (needs SLM_REDIS_URL)")
    worker.add_argument("--model", required=True, help="the registry entry this worker serves")

    registry = add("registry", "registry tools")
    registry_sub = registry.add_subparsers(dest="registry_command", required=True)
    check = registry_sub.add_parser("check", help="validate a registry file and say what is wrong", parents=[common])
    check.add_argument("path", nargs="?", type=Path)
    registry_sub.add_parser("schema", help="print the registry's JSON schema (for editors)")

    from server.bench import add_arguments as add_bench_arguments
    from server.compare.arguments import add_arguments as add_compare_arguments

    bench = add("bench", "closed-loop load against any OpenAI-compatible server; one JSON line")
    add_bench_arguments(bench)

    compare = add("compare", "chart speed against quality for each model")
    add_compare_arguments(compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    overrides: dict[str, object] = {}
    for name in ("host", "port"):
        if getattr(args, name, None) is not None:
            overrides[name] = getattr(args, name)
    if getattr(args, "registry", None) is not None:
        overrides["registry"] = args.registry
    settings = Settings(**overrides)  # type: ignore[arg-type]
    setup_logging(settings.log_level, settings.log_format)

    if args.command == "bench":
        from server.bench import run as run_bench

        return run_bench(args)
    if args.command == "compare":
        from server.compare.command import run as run_compare

        return run_compare(args)
    if args.command == "registry" and args.registry_command == "schema":
        import json

        from server.registry import json_schema

        sys.stdout.write(json.dumps(json_schema(), indent=2) + "\n")
        return 0
    if args.command == "registry":
        path = args.path or settings.registry
        checked = _load(settings.model_copy(update={"registry": path}))
        if checked is None:
            return 1
        sys.stdout.write(f"{path}: OK ({len(checked.models)} models: {', '.join(checked.models)})\n")
        return 0
    if args.command == "worker":
        if not settings.redis_configured:
            log.error("the worker needs SLM_REDIS_URL or SLM_REDIS_SENTINELS")
            return 2
        from server.worker.process import run_worker

        return run_worker(settings, args.model)
    loaded = _load(settings)
    if loaded is None:
        return 1
    try:
        ApiKeys.load(settings.api_keys.get_secret_value(), settings.api_keys_file)
    except ApiKeyConfigError as exc:
        log.error("invalid API keys: %s", exc)
        return 1
    if args.command == "serve":
        from server.supervisor import serve

        return serve(settings, loaded)
    if args.command == "gateway":
        if not settings.redis_configured:
            log.error("the gateway needs SLM_REDIS_URL or SLM_REDIS_SENTINELS")
            return 2
        import uvicorn

        from server.app import create_app
        from server.http_server import GatewayServer
        from server.supervisor import absorb_reraised_signals

        absorb_reraised_signals()
        app = create_app(settings, loaded)
        GatewayServer(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning",
                                     access_log=False, timeout_graceful_shutdown=30)).run()
        return 0
    return 2
