"""`rill serve FLOWS_DIR`: the web chat, the run API and /v1/chat/completions on uvicorn.

Flows are compiled before anything starts (a bad flow: its ``file:line:col`` lines, exit 2), then
collections are ingested from their ``sources:`` and models loaded, and only then does the server
listen: the first request never waits for a model load. With ``--workers N`` each worker process
does the same; the parent still validates first.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict, fields
from pathlib import Path
from typing import Annotated, Any

import typer

from rillflow.ui.limits import KeyLimits
from rillflow.ui.settings import ServeSettings

EXIT_INVALID = 2
# an import string, not the class: uvicorn imports it in each --workers process, and importing uvicorn here
# would slow every other command
HTTP_PROTOCOL = "rillflow.ui.protocol:BoundedCloseH11Protocol"
_ENV = "RILL_SERVE_CONFIG"  # how the parent hands flows and settings to `--workers` processes


def add_serve_command(app: typer.Typer) -> None:
    app.command("serve")(serve)


def serve(
    flows: Annotated[Path, typer.Argument(help="A folder of flows (or one flow file) to serve.")] = Path("flows"),
    host: Annotated[str, typer.Option(help="Interface to listen on; 0.0.0.0 for every interface (put a proxy in front).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    workers: Annotated[int, typer.Option(min=1, help="Processes; >1 needs a Qdrant server (url:) and, for shared limits, --limits-url.")] = 1,
    api_keys: Annotated[Path | None, typer.Option("--api-keys", help="Key file from `rill keys create`; without it the API is open (local demo).")] = None,
    cors_origin: Annotated[list[str] | None, typer.Option("--cors-origin", help="An origin allowed to call the API from a browser (repeat).")] = None,
    max_active: Annotated[int, typer.Option(min=1, help="Runs at once; more wait in a bounded queue, then get 503.")] = 16,
    max_queued: Annotated[int, typer.Option(min=0, help="Requests waiting for a run slot before new ones get 503.")] = 64,
    rpm: Annotated[int | None, typer.Option("--rpm", min=1, help="Default requests per minute per key (or per client address without keys).")] = 60,
    tpm: Annotated[int | None, typer.Option("--tpm", min=1, help="Default model tokens per minute per key.")] = None,
    daily_tokens: Annotated[int | None, typer.Option("--daily-tokens", min=1, help="Default daily token budget per key (UTC day).")] = None,
    daily_cost: Annotated[float | None, typer.Option("--daily-cost", min=0.000001, help="Default daily cost budget per key, in USD.")] = None,
    max_streams: Annotated[int | None, typer.Option("--max-streams", min=1, help="Default concurrent runs per key.")] = 4,
    limits_url: Annotated[str | None, typer.Option("--limits-url", envvar="RILL_LIMITS_URL", help="redis://... to share limits between workers.")] = None,
    max_body: Annotated[int, typer.Option("--max-body", help="Largest request body in bytes (413).")] = 1_000_000,
    max_input_chars: Annotated[int, typer.Option("--max-input-chars", help="Most characters of text in one request's inputs (422).")] = 32_000,
    send_timeout: Annotated[float, typer.Option("--send-timeout", help="Seconds a stalled stream reader is given per send.")] = 30.0,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Serve without the node cache.")] = False,
    no_trace: Annotated[bool, typer.Option("--no-trace", help="Record no traces (the chat's trace view then has nothing to show).")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
) -> None:
    """Serve flows: a web chat at /, the run API at /api, OpenAI-compatible /v1, /healthz, /readyz and /metrics."""
    from rillflow.ui.flows import FlowsError, load_flows

    limits = KeyLimits(requests_per_minute=rpm, tokens_per_minute=tpm, daily_tokens=daily_tokens, daily_cost_usd=daily_cost,
                       max_streams=max_streams)
    settings = ServeSettings(max_body_bytes=max_body, max_input_chars=max_input_chars, send_timeout=send_timeout,
                             max_active=max_active, max_queued=max_queued, cors_origins=tuple(cors_origin or ()),
                             api_keys=api_keys, limits=limits, limits_url=limits_url, cache=not no_cache, trace=not no_trace)
    try:
        served = load_flows(flows)
        if api_keys is not None:
            from rillflow.ui.auth import KeyFileError, KeyStore

            try:
                KeyStore.load(api_keys, limits)
            except (KeyFileError, OSError) as exc:
                raise FlowsError([f"error: {exc}"]) from None
    except FlowsError as exc:
        for line in exc.lines:
            typer.echo(line, err=True)
        raise typer.Exit(EXIT_INVALID) from None
    if workers > 1:
        os.environ[_ENV] = json.dumps({"flows": str(flows.resolve()), "host": host, "port": port, "settings": _encode(settings)})
        import uvicorn

        uvicorn.run("rillflow.ui.serve_cli:worker_app", factory=True, host=host, port=port, workers=workers, log_level=log_level,
                    timeout_graceful_shutdown=int(settings.shutdown_grace) + 5, http=HTTP_PROTOCOL)
        return
    raise typer.Exit(_serve_one(served, settings, host, port, log_level))


def _serve_one(served: Any, settings: ServeSettings, host: str, port: int, log_level: str) -> int:
    import asyncio

    import uvicorn

    from rillflow.ui.app import build_app
    from rillflow.ui.flows import FlowsError

    app = build_app(served, settings, say=_say)

    async def main() -> int:
        try:
            await app.state.rill.open()  # before listening: no request waits for a model load, no traceback for a bad start
        except FlowsError as exc:
            for line in exc.lines:
                typer.echo(line, err=True)
            return EXIT_INVALID
        _say(f"rillflow is serving {', '.join(sorted(served))}: open http://{_display_host(host)}:{port}/ (Ctrl+C stops)")
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=int(settings.shutdown_grace) + 5,
                                http=HTTP_PROTOCOL)
        await uvicorn.Server(config).serve()
        return 0

    return asyncio.run(main())


def worker_app() -> Any:
    """The app of one `--workers` process (uvicorn calls this factory in each worker)."""
    from rillflow.ui.app import build_app
    from rillflow.ui.flows import load_flows

    config = json.loads(os.environ[_ENV])
    return build_app(load_flows(Path(config["flows"])), _decode(config["settings"]), say=_say)


def _say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _display_host(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host


def _encode(settings: ServeSettings) -> dict[str, Any]:
    data = asdict(settings)
    data["api_keys"] = None if settings.api_keys is None else str(settings.api_keys)
    data["cors_origins"] = list(settings.cors_origins)
    return data


def _decode(data: dict[str, Any]) -> ServeSettings:
    known = {f.name for f in fields(ServeSettings)}
    values = {k: v for k, v in data.items() if k in known}
    values["limits"] = KeyLimits(**values["limits"])
    values["api_keys"] = None if values["api_keys"] is None else Path(values["api_keys"])
    values["cors_origins"] = tuple(values["cors_origins"])
    return ServeSettings(**values)
