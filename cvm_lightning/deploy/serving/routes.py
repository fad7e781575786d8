"""The routes ``cvm serve`` adds to LitServe's app: the status page, ``/metrics``, ``/drift`` and ``/model``.

Each sits behind the same API-key check as ``/predict`` (the LitAPI's
``authorize``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from cvm_lightning.deploy.serving.config import ServeConfig
from cvm_lightning.deploy.serving.model_swap import request_swap, swap_outcomes, withdraw_swap
from cvm_lightning.deploy.serving.status_page import render_status
from cvm_lightning.deploy.serving.telemetry import metrics_registry, read_state, request_summary

SWAP_WAIT_SECONDS = 120  # POST /model waits this long for every worker's outcome


def add_routes(app: FastAPI, config: ServeConfig, folder: Path, api_key: str | None, authorize: Callable) -> None:
    """Add the routes to ``app``; ``folder`` is the server's state, where the logger writes and swaps wait."""
    authorized = [Depends(authorize)]
    # LitServe's own "/" answers "litserve running": the status page replaces it.
    app.router.routes = [r for r in app.router.routes if getattr(r, "path", None) != "/"]

    @app.get("/", dependencies=authorized, response_class=HTMLResponse)
    async def status_page() -> HTMLResponse:
        return HTMLResponse(render_status(read_state(folder), request_summary(metrics_registry())))

    @app.get("/metrics", dependencies=authorized)
    async def metrics() -> Response:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return Response(generate_latest(metrics_registry()), media_type=CONTENT_TYPE_LATEST)

    @app.get("/drift", dependencies=authorized)
    async def drift() -> JSONResponse:
        state = read_state(folder)
        if state.get("drift") is None:
            raise HTTPException(503, "The server is still starting: ask again in a moment.")
        return JSONResponse({"model": state["model"], **state["drift"]})

    @app.post("/model", dependencies=authorized)
    async def swap_model(request: Request) -> JSONResponse:
        if api_key is None:
            raise HTTPException(403, "POST /model swaps the served model, so it needs an API key: restart the "
                                     "server with --api-key-file FILE (or $CVM_API_KEY).")
        try:
            body = await request.json() if await request.body() else {}
            path = Path(body.get("path") or config.model)
            reference = Path(body["reference"]) if body.get("reference") else None
        except (ValueError, AttributeError, TypeError):
            raise HTTPException(400, 'Send {"path": "NEW.onnx"} as JSON, with "reference": "DIR" for a new drift '
                                     "reference (or nothing, to reload --model).") from None
        if reference is not None and not reference.is_dir():
            raise HTTPException(400, f"The reference {reference.name!r} is not a folder the server can read: pass "
                                     "the folder of the update's held-out images.")
        request_id = request_swap(folder / "swaps", path, reference)
        deadline = time.monotonic() + SWAP_WAIT_SECONDS
        while (outcomes := swap_outcomes(folder / "swaps", request_id, config.workers)) is None:
            if time.monotonic() > deadline:
                withdraw_swap(folder / "swaps", request_id)
                raise HTTPException(504, f"The workers did not answer the swap within {SWAP_WAIT_SECONDS} s.")
            await asyncio.sleep(0.05)
        refused = [o for o in outcomes if o["event"] == "refused"]
        if refused:
            return JSONResponse({"detail": refused[0]["reason"], "model": refused[0]["model"]}, status_code=422)
        return JSONResponse({"model": outcomes[0]["model"], "previous": outcomes[0]["previous"]})
