"""A camera PC's client of `cvm serve`: send each image file, print its class, then the server's drift report.

    cvm serve --model model.onnx --reference held-out/          # in another terminal
    python examples/serve_client.py photos/ [--url http://127.0.0.1:8000] [--key-file KEY]

The standard library alone: nothing to install on the camera PC. The key,
where the server needs one, comes from --key-file or $CVM_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def call(url: str, key: str | None, data: bytes | None = None, content_type: str | None = None) -> dict:
    """One request; the JSON answer, or the server's one-line error as ``{"error": status, "detail": ...}``."""
    request = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if content_type:
        request.add_header("Content-Type", content_type)
    if key:
        request.add_header("X-API-Key", key)
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return json.load(answer)
    except urllib.error.HTTPError as err:
        return {"error": err.code, "detail": json.load(err).get("detail", "")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", type=Path, nargs="+", help="image files or folders (searched recursively)")
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the server")
    parser.add_argument("--key-file", type=Path, default=None, help="file holding the API key (default: $CVM_API_KEY)")
    args = parser.parse_args()
    key = args.key_file.read_text().strip() if args.key_file else os.environ.get("CVM_API_KEY")
    files = [p for item in args.paths for p in (sorted(item.rglob("*")) if item.is_dir() else [item])
             if p.suffix.lower() in IMAGE_SUFFIXES]
    try:
        for path in files:
            kind = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            answer = call(f"{args.url}/predict", key, path.read_bytes(), kind)
            if "error" in answer:
                print(f"{path}\terror {answer['error']}: {answer['detail']}")
            else:
                print(f"{path}\t{answer['class_name']}\t{answer['score']:.4f}\tmodel {answer['model']['version'][:12]}")
        drift = call(f"{args.url}/drift", key)
    except urllib.error.URLError as err:
        print(f"serve_client: no server at {args.url} ({err.reason}); start one with `cvm serve --model FILE`.",
              file=sys.stderr)
        return 2
    if "error" in drift:
        print(f"drift: error {drift['error']}: {drift['detail']}")
        return 0
    print(f"drift over the latest {drift['window']} images: {', '.join(drift['drifted']) or 'none'}")
    if drift["next_step"]:
        print(drift["next_step"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
