"""The LitServe API of ``cvm serve``: decode in the HTTP server, predict a batch, answer with the version.

(No ``from __future__ import annotations`` here: LitServe hands the
annotation of ``decode_request`` to FastAPI as the request's type.)
"""

import hmac
import os
import signal
from pathlib import Path
from typing import Annotated, Optional

import litserve as ls
import numpy as np
from fastapi import Depends, HTTPException, Request

from cvm_lightning.deploy.serving.config import ServeConfig
from cvm_lightning.deploy.serving.model_swap import ModelSwapper
from cvm_lightning.deploy.serving.request_body import image_from_request
from cvm_lightning.deploy.serving.served_model import ServedModel, load_reference, load_served_model, reference_stats
from cvm_lightning.deploy.serving.telemetry import configure_logging
from cvm_lightning.metrics.drift_statistic import nearest_and_margin


def key_matches(headers, key: Optional[str]) -> bool:
    """Whether ``headers`` carry ``key`` (``X-API-Key: KEY`` or ``Authorization: Bearer KEY``), compared in
    constant time; with no key set, every request does."""
    if key is None:
        return True
    sent = headers.get("x-api-key") or ""
    scheme, _, token = (headers.get("authorization") or "").partition(" ")
    if not sent and scheme.lower() == "bearer":
        sent = token.strip()
    return hmac.compare_digest(sent.encode(), key.encode())


KEY_ERROR = "A valid API key is needed: send it as X-API-Key or Authorization: Bearer."


class CVMServeAPI(ls.LitAPI):
    """``POST /predict``: one image in, its class, score, top k and the answering model's name and version out."""

    def __init__(self, config: ServeConfig, folder: Path, api_key: Optional[str] = None) -> None:
        super().__init__(max_batch_size=config.max_batch_size, batch_timeout=config.batch_timeout,
                         api_path="/predict")
        self.config, self.folder, self.api_key = config, Path(folder), api_key

    def authorize(self, request: Request) -> None:
        """LitServe's hook, on every route: the API key, where one is set."""
        if not key_matches(request.headers, self.api_key):
            raise HTTPException(401, KEY_ERROR)

    def setup(self, device) -> None:
        # A stop signal may reach every process of the server: its main process stops the workers once the
        # requests in flight are answered.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        configure_logging()
        worker = int(os.environ.get("LITSERVE_WORKER_ID", "0"))
        model = load_served_model(self.config.model, self.folder / "models", threads=self.config.worker_threads())
        reference = load_reference(self.config.reference, model) if self.config.reference else None
        self.swapper = ModelSwapper(model, reference, folder=self.folder / "swaps", worker=worker,
                                    watch=self.config.watch, interval=self.config.watch_interval,
                                    threads=self.config.worker_threads(), on_change=self._changed)
        self._changed({"event": "loaded", "worker": worker, "path": str(model.source), "time": model.loaded_at,
                       "model": model.describe(), "classes": model.predictor.class_names})
        self.swapper.start()

    def _changed(self, event: dict) -> None:
        """Tell the logger of a load, swap or refusal; a new model comes with its drift reference."""
        if event["event"] != "refused":
            model: ServedModel = self.swapper.current
            pixels = self.swapper.reference
            stats = reference_stats(model, pixels) if pixels is not None else None
            classes = dict(zip(map(str, model.predictor.class_ids), model.predictor.class_names))
            self.log("reference", {"version": model.version, "classes": classes, "stats": stats})
        self.log("model", event)

    def decode_request(self, request: Annotated[np.ndarray, Depends(image_from_request)]) -> np.ndarray:
        return request  # decoded by the HTTP server: a bad body never reaches a batch

    def batch(self, inputs: list) -> np.ndarray:
        return np.stack(inputs)

    def predict(self, images: np.ndarray) -> list:
        model = self.swapper.current  # the whole batch is answered by the model it started with
        single = images.ndim == 3  # max_batch_size 1: LitServe passes one image
        sims = model.predictor.similarities(images[None] if single else images)
        nearest, margin = nearest_and_margin(sims)
        ids = np.asarray(model.predictor.class_ids)[sims.argmax(axis=1)].tolist()
        self.log("batch", {"class_ids": ids, "nearest": nearest.tolist(), "margin": margin.tolist()})
        answers = [(row, model) for row in sims]
        return answers[0] if single else answers

    def unbatch(self, output: list) -> list:
        return output

    def encode_response(self, output) -> dict:
        sims, model = output
        predictor = model.predictor
        order = np.argsort(-sims)[: self.config.top_k].tolist()
        top = [{"class_name": predictor.class_names[i], "class_id": predictor.class_ids[i],
                "score": round(float(sims[i]), 6)} for i in order]
        return {**top[0], "top_k": top, "model": model.describe()}
