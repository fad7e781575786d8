"""Build and run the LitServe server of ``cvm serve``.

The pieces: :class:`~cvm_lightning.deploy.serving.api.CVMServeAPI` on
``POST /predict`` (LitServe's batching and workers), ``GET /drift``,
``POST /model``, the status page at ``GET /`` and ``GET /metrics``, all
behind the same API-key check. Ctrl-C or SIGTERM stop it gracefully: the
HTTP servers stop taking connections and answer the requests in flight, and
only then do the workers and the logger stop.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from cvm_lightning.deploy.serving.config import LOOPBACK, ServeConfig, check_config
from cvm_lightning.errors import CVMError, DataError

log = logging.getLogger("cvm_lightning.serve")
DRAIN_SECONDS = 30  # requests in flight get this long to finish at a stop
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _litserve():
    try:
        import litserve
    except ImportError:
        raise DataError("cvm serve needs the serve extra: pip install 'cvm_lightning[serve]' (LitServe, "
                        "prometheus-client, python-multipart).") from None
    return litserve


def build_server(config: ServeConfig, folder: Path, api_key: str | None, first):
    """The LitServer of ``config``; ``folder`` holds its state, ``first`` is the checked model (its input size)."""
    ls = _litserve()
    from cvm_lightning.deploy.serving.api import CVMServeAPI
    from cvm_lightning.deploy.serving.request_body import BodyLimits
    from cvm_lightning.deploy.serving.routes import add_routes
    from cvm_lightning.deploy.serving.telemetry import HTTPMetrics, ServeLogger

    class CVMServer(ls.LitServer):
        # Only this process acts on Ctrl-C and SIGTERM, which may reach every process of the server at once (a
        # terminal's Ctrl-C, `pkill`, systemd's stop): it lets the HTTP servers drain, then stops the rest.

        def _init_manager(self, num_api_servers):
            with _signals_ignored():  # the queues' manager is forked, and the logger spawned, from here
                return super()._init_manager(num_api_servers)

        def _start_server(self, *args, **kwargs):
            # The HTTP servers are forked: they inherit ignored signals, which uvicorn replaces with its own while
            # it serves (a stop makes it finish the requests it holds) and raises again on its way out, ignored.
            with _signals_ignored():
                return super()._start_server(*args, **kwargs)

        def _perform_graceful_shutdown(self, manager, uvicorn_workers, shutdown_reason="normal"):
            # LitServe closes its queues before it stops the HTTP servers; drain those first, so every request in
            # flight is answered. Then nothing is left to answer: the workers and LitServe's logger process (which
            # it starts but does not track) ignore stop signals, so they are killed.
            for server in uvicorn_workers.values():
                if server.is_alive():
                    server.terminate()  # uvicorn: stop accepting, finish what it holds
            for server in uvicorn_workers.values():
                server.join(DRAIN_SECONDS)
            for child in mp.active_children():
                if child is not manager._process and child not in uvicorn_workers.values():
                    child.kill()
                    child.join(5)
            # As after a Ctrl-C: a farewell message through the queues would only wait on the dead workers.
            super()._perform_graceful_shutdown(manager, {}, "keyboard_interrupt")

    api = CVMServeAPI(config, folder, api_key)
    server = CVMServer(api, accelerator="cpu", workers_per_device=config.workers,
                       loggers=ServeLogger(folder, config.drift_window, config.z_threshold),
                       middlewares=[HTTPMetrics], disable_openapi_url=True, timeout=DRAIN_SECONDS)
    channels, size, _ = first.input_shape
    server.app.state.body_limits = BodyLimits(size, channels, config.max_request_bytes, config.max_image_pixels)
    add_routes(server.app, config, folder, api_key, api.authorize)
    return server


def serve(config: ServeConfig, *, on_ready=None) -> None:
    """Run the server of ``config`` until Ctrl-C or SIGTERM; every check comes first (:func:`check_config`, the
    model loads and passes its smoke test, the reference images read), so a bad setting stops it before it
    listens. ``on_ready(url, model)`` is called once the workers are up."""
    api_key = check_config(config)
    _litserve()
    folder = Path(tempfile.mkdtemp(prefix="cvm-serve-"))
    try:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(folder / "metrics")  # before prometheus_client is imported
        (folder / "metrics").mkdir()
        (folder / "swaps").mkdir()
        from cvm_lightning.deploy.serving.served_model import load_reference, load_served_model
        from cvm_lightning.deploy.serving.telemetry import configure_logging

        configure_logging()
        try:
            first = load_served_model(config.model, folder / "models")
        except CVMError as err:
            raise DataError(str(err)) from None
        if config.reference is not None:
            load_reference(config.reference, first)
        server = build_server(config, folder, api_key, first)
        host = f"[{config.host}]" if ":" in config.host else config.host
        url = f"http://{host if config.host != '0.0.0.0' else LOOPBACK}:{config.port}"
        if on_ready is not None:
            server.verify_worker_status = _then(server.verify_worker_status, lambda: on_ready(url, first))
        server.run(host=config.host, port=config.port, log_level="warning", generate_client_file=False,
                   num_api_servers=config.workers)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def _signals_ignored() -> Iterator[None]:
    """Ctrl-C and SIGTERM ignored within the block (and by the processes it starts), then as they were."""
    previous = {signum: signal.signal(signum, signal.SIG_IGN) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _then(call, after):
    def both(*args, **kwargs):
        result = call(*args, **kwargs)
        after()
        return result

    return both
