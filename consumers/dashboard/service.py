"""dashboard: serves the Open MCT web app and what it needs, as a ``ServerService``.

Routes (all GET):

* ``/`` the app (``web/index.html``), ``/app/*`` its plugin and styles (``web/src``);
* ``/vendor/openmct/*``, ``/vendor/mqtt/*``: the npm packages, installed by
  ``make setup`` from the lockfile (``npm ci`` in ``consumers/dashboard/web``);
* ``/config.json``: MQTT-over-WebSocket URL, topic root and the engineering
  dictionary (subsystems, parameters, units, limits) the plugin builds its objects from;
* ``/api/v1/engineering``: proxied to the archive API's history endpoint (same
  origin for the browser; ``502`` with a reason when the archive is not
  running, and the plugin falls back to its in-page buffer of live values);
* ``/healthz``.

The browser talks MQTT to Mosquitto's WebSocket listener directly; this
server holds no telemetry state.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from consumers.framework.server import ServerService
from core.errors import ConfigError
from streams.dictionary import load_dictionary

log = logging.getLogger(__name__)

WEB = Path(__file__).resolve().parent / "web"
VENDOR = {"openmct": WEB / "node_modules" / "openmct" / "dist",
          "mqtt": WEB / "node_modules" / "mqtt" / "dist"}


def dashboard_config(settings) -> dict[str, Any]:
    """What the browser needs to know, from the settings and the engineering dictionary."""
    d = load_dictionary(settings.dictionary_file)
    subsystems: dict[str, list[dict[str, Any]]] = {}
    for apid, params in d.by_apid().items():
        for p in params:
            subsystems.setdefault(p.subsystem, []).append({
                "name": p.name, "unit": p.unit, "apid": apid, "description": p.description,
                "yellow": list(p.yellow) if p.yellow else None, "red": list(p.red) if p.red else None,
                "period_s": d.packet(apid).period_s})
    rt = settings.realtime
    return {"wsUrl": rt.ws_url, "root": rt.topic_root, "history": "/api/v1/engineering",
            "subsystems": [{"name": k, "parameters": v} for k, v in sorted(subsystems.items())]}


def archive_base(settings) -> str:
    rt, a = settings.realtime, settings.archive
    return (rt.archive_url or f"http://{a.api_host}:{a.api_port}").rstrip("/")


def build_app(settings) -> Any:
    """The ASGI app (Starlette, imported here: only the dashboard process loads it)."""
    import httpx
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import FileResponse, JSONResponse, Response
    from starlette.routing import Mount, Route
    from starlette.staticfiles import StaticFiles

    missing = [str(p) for p in VENDOR.values() if not p.is_dir()]
    if missing:
        raise ConfigError(f"dashboard web dependencies missing ({', '.join(missing)}): run `make setup` "
                          "(it runs `npm ci` in consumers/dashboard/web)")
    config = dashboard_config(settings)
    base = archive_base(settings)

    async def index(_: Request) -> Response:
        return FileResponse(WEB / "index.html", headers={"Cache-Control": "no-cache"})

    async def config_json(_: Request) -> Response:
        return JSONResponse(config)

    async def health(_: Request) -> Response:
        return JSONResponse({"ok": True})

    async def engineering(request: Request) -> Response:
        try:
            async with httpx.AsyncClient(timeout=10.0) as client:
                r = await client.get(f"{base}/api/v1/engineering", params=dict(request.query_params))
        except httpx.HTTPError as exc:
            log.warning("archive API unreachable for history", extra={"archive": base, "error": repr(exc)})
            return JSONResponse({"error": f"archive API at {base} unreachable: {type(exc).__name__}; "
                                          "start it with `downlink serve`"}, status_code=502)
        return Response(r.content, status_code=r.status_code,
                        media_type=r.headers.get("content-type", "application/json"))

    return Starlette(routes=[
        Route("/", index), Route("/config.json", config_json), Route("/healthz", health),
        Route("/api/v1/engineering", engineering),
        Mount("/app", StaticFiles(directory=WEB / "src")),
        Mount("/vendor/openmct", StaticFiles(directory=VENDOR["openmct"])),
        Mount("/vendor/mqtt", StaticFiles(directory=VENDOR["mqtt"])),
    ])


class Dashboard(ServerService):
    name = "dashboard"
    shutdown_timeout = 3.0

    def __init__(self, settings, *, host: str | None = None, port: int | None = None, **kw: Any) -> None:
        rt = settings.realtime
        super().__init__(settings, host=host or rt.dashboard_host, port=port or rt.dashboard_port, **kw)

    def app(self) -> Any:
        return build_app(self.settings)
