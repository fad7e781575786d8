"""One image from a request body, decoded in the HTTP server before it reaches a batch.

A body that cannot be served is answered here with a one-line 4xx JSON error
(``{"detail": ...}``, FastAPI's shape): too large (413), of the wrong type
(415), empty, not an image or a decompression bomb (400). Nothing of it
reaches an inference worker, so a bad request never fails a batch of good
ones. The limits come from the app's :class:`BodyLimits` (``app.state``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from fastapi import HTTPException, Request
from starlette.requests import ClientDisconnect

from cvm_lightning.image_files import UnreadableImageError, read_image

RAW_TYPES = ("application/octet-stream",)  # besides image/*
FORM_TYPE = "multipart/form-data"
SEND_AS = ("send the image as the body with Content-Type image/* or application/octet-stream, or as the file of a "
           "multipart/form-data form")


@dataclass(frozen=True)
class BodyLimits:
    """What the served model takes and how much a request may hold."""

    image_size: int
    in_chans: int
    max_bytes: int
    max_pixels: int


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it exceeds ``max_bytes`` (by its Content-Length or as it streams)."""
    too_large = HTTPException(413, f"The request body is larger than the {max_bytes} bytes allowed "
                                   "(--max-request-bytes): send a smaller image.")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise too_large
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise too_large
            chunks.append(chunk)
    except ClientDisconnect:  # nobody is left to answer, but the log stays one line
        raise HTTPException(400, "The client disconnected before the body was complete.") from None
    return b"".join(chunks)


async def _form_file(request: Request, body: bytes) -> bytes:
    """The first file of a multipart body (already read, so parsed from memory)."""
    async def replay() -> dict:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(max_files=1, max_fields=8)
    except Exception:  # starlette and python-multipart raise several kinds on a malformed form
        raise HTTPException(400, "The multipart/form-data body cannot be parsed: send one file field.") from None
    files = [value for value in form.values() if hasattr(value, "read")]
    if not files:
        raise HTTPException(400, "The multipart/form-data body holds no file: send the image as a file field.")
    return await files[0].read()


async def image_from_request(request: Request) -> np.ndarray:
    """FastAPI dependency: the request's image as the uint8 C x H x W array the model takes."""
    limits: BodyLimits = request.app.state.body_limits
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    is_form = content_type == FORM_TYPE
    if content_type and not (is_form or content_type.startswith("image/") or content_type in RAW_TYPES):
        raise HTTPException(415, f"Content-Type {content_type} is not an image: {SEND_AS}.")
    body = await read_body(request, limits.max_bytes)
    data = await _form_file(request, body) if is_form else body
    if not data:
        raise HTTPException(400, f"The request holds no image (the body is empty): {SEND_AS}.")
    try:
        return read_image(io.BytesIO(data), limits.image_size, "L" if limits.in_chans == 1 else "RGB",
                          max_pixels=limits.max_pixels)
    except UnreadableImageError as err:
        raise HTTPException(400, f"The body is not a readable image ({err.reason}): send a PNG, JPEG or other "
                                 "image file.") from None
