"""`cvm serve` under load on loopback, beside the in-process predictions of the same model on the same CPU.

    python benchmarks/serve_load.py [--model M.onnx --swap-to N.onnx --images DIR] [--soak-seconds 300]
                                    [--soak-requests 100000] [--json out.json]

Without ``--model``, it trains CVM on the embedded digits for one epoch and
exports it twice (float32, and int8 to swap to). Everything runs in one
go on one CPU, bounded in count and time, and reports ratios:

- throughput with 16 concurrent clients against ``predict_files`` at batch 16
  (files read, decoded and predicted in-process);
- the p50 latency of one client against an in-process batch of one image
  (read, decoded and predicted);
- a swap to another model under load: failed and lost requests, and whether
  every request sent after the swap was answered by the new version;
- 1,000 mixed bad requests under load: 5xx answers, the server still up, and
  the good requests' p99 against the p99 without them;
- resident memory of the server's processes after a soak against after the
  warm-up of the model swapped in (and after the swap against before it);
- the time from ``cvm serve`` to a 200 from ``/health``.

The clients run in this process (asyncio and httpx) on the same cores as the
server, as a camera PC's client would not: the throughput ratio is a floor.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from _report import table, write_json

KEY = "serve-load-benchmark-key-0123456789"
CLIENTS = 16
BODY_LIMIT = 256 * 1024  # --max-request-bytes of the served model: the "too large" requests just exceed it


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def build_models(folder: Path) -> tuple[Path, Path, Path]:
    """CVM on the digits (one epoch), exported as float32 and int8 ONNX, and the digits' test images as PNGs."""
    from PIL import Image
    from sklearn.datasets import load_digits

    from cvm_lightning.app.cli import main

    run = folder / "run"
    assert main(["run", "--benchmark", "split-digits", "--strategies", "cvm", "--epochs", "1", "--no-progress",
                 "--out", str(run)]) == 0
    fp32, int8 = folder / "digits.onnx", folder / "digits-int8.onnx"
    assert main(["export", "--checkpoint", str(run / "final.ckpt"), "--format", "onnx", "--out", str(fp32)]) == 0
    assert main(["export", "--checkpoint", str(run / "final.ckpt"), "--format", "onnx", "--quantize", "int8",
                 "--out", str(int8)]) == 0
    digits = load_digits()
    images = folder / "images"
    for i, (pixels, label) in enumerate(zip(digits.images[:512], digits.target[:512])):
        (images / str(label)).mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255 / 16).astype(np.uint8)).resize((32, 32)).save(images / str(label) / f"{i}.png")
    return fp32, int8, images


def in_process(model: Path, files: list[Path]) -> dict:
    """``predict_files`` at batch 16 (images/s, best of 3) and the median time of one image read and predicted."""
    from cvm_lightning.deploy.predict import Predictor, predict_files

    predict_files(model, files[:32], batch_size=16)  # warm-up
    rates = []
    for _ in range(3):
        start = time.perf_counter()
        predict_files(model, files, batch_size=16)
        rates.append(len(files) / (time.perf_counter() - start))
    predictor = Predictor(model)
    single = []
    for path in files[:300]:
        start = time.perf_counter()
        predictor.similarities(predictor.load_images([path]))
        single.append(time.perf_counter() - start)
    return {"throughput": max(rates), "batch1_p50": float(np.median(single))}


def tree_rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and all its descendants, in MB."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0.0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


class Load:
    """Concurrent keep-alive clients posting images; each answer's latency, status and version are kept.

    A bare HTTP/1.1 client on asyncio streams: the clients share the server's cores, so the lighter they are,
    the closer the figures come to what a camera PC on the network would see.
    """

    def __init__(self, url: str, images: list[bytes]) -> None:
        self.host, self.port = url.removeprefix("http://").split(":")
        self.requests = [self.request(body, "image/png") for body in images]
        self.latencies: list[float] = []
        self.statuses: dict[int, int] = {}
        self.versions: list[tuple[float, str]] = []  # (time the request was sent, version that answered)
        self.errors: list[str] = []
        self.sent = 0

    @staticmethod
    def request(body: bytes, content_type: str) -> bytes:
        return (f"POST /predict HTTP/1.1\r\nHost: bench\r\nContent-Type: {content_type}\r\nContent-Length: "
                f"{len(body)}\r\nX-API-Key: {KEY}\r\n\r\n").encode() + body

    async def ask(self, reader, writer, request: bytes) -> tuple[int, bytes]:
        writer.write(request)
        await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        length = next(int(line.split(":")[1]) for line in lines if line.lower().startswith("content-length"))
        return int(lines[0].split()[1]), await reader.readexactly(length)

    async def client(self, until: float, requests: int | None, offset: int) -> None:
        reader, writer = await asyncio.open_connection(self.host, int(self.port))
        i = offset
        while time.monotonic() < until and (requests is None or self.sent < requests):
            self.sent += 1
            start = time.monotonic()
            try:
                status, body = await self.ask(reader, writer, self.requests[i % len(self.requests)])
            except (OSError, asyncio.IncompleteReadError, ValueError) as err:
                self.errors.append(repr(err))
                reader, writer = await asyncio.open_connection(self.host, int(self.port))
                continue
            i += 1
            self.latencies.append(time.monotonic() - start)
            self.statuses[status] = self.statuses.get(status, 0) + 1
            if status == 200:
                self.versions.append((start, json.loads(body)["model"]["version"]))
        writer.close()

    async def run(self, clients: int, seconds: float, requests: int | None = None, extra=None) -> None:
        until = time.monotonic() + seconds
        tasks = [self.client(until, requests, k * 7) for k in range(clients)]
        if extra is not None:
            tasks.append(extra(self))
        await asyncio.gather(*tasks)

    def quantile(self, q: float) -> float:
        return float(np.quantile(self.latencies, q)) if self.latencies else float("nan")

    @property
    def answered(self) -> int:
        return sum(self.statuses.values())


def bad_bodies(folder: Path) -> list[tuple[bytes, str]]:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from cli_helpers import write_decompression_bomb

    bomb = write_decompression_bomb(folder / "bomb.png").read_bytes()
    return [(b"not an image at all", "image/png"), (b"", "image/png"), (bomb, "image/png"),
            (b'{"image": 1}', "application/json"), (b"\x89PNG" + b"\0" * BODY_LIMIT, "image/png"),
            (b"--x\r\nContent-Disposition: form-data; name=a\r\n\r\nb\r\n--x--\r\n", "multipart/form-data; boundary=x")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=None, help="an .onnx export (default: trained on the digits)")
    parser.add_argument("--swap-to", type=Path, default=None, help="the file swapped in under load")
    parser.add_argument("--images", type=Path, default=None, help="images to send (default: the digits' PNGs)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each load phase")
    parser.add_argument("--soak-seconds", type=float, default=300.0)
    parser.add_argument("--soak-requests", type=int, default=100_000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="serve-load-"))
    if args.model is None:
        model, swap_to, image_folder = build_models(work)
    else:
        model, swap_to, image_folder = args.model, args.swap_to or args.model, args.images
    files = sorted(p for p in image_folder.rglob("*") if p.suffix.lower() in {".png", ".jpg", ".jpeg"})
    bodies = [p.read_bytes() for p in files]
    local = in_process(model, files)

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    started = time.monotonic()
    server = subprocess.Popen(
        [sys.executable, "-m", "cvm_lightning", "serve", "--model", str(model), "--reference", str(image_folder),
         "--port", str(port), "--max-request-bytes", str(BODY_LIMIT)],
        env={**os.environ, "CVM_API_KEY": KEY}, stdout=subprocess.DEVNULL, stderr=open(work / "serve.err", "w"))
    while True:
        try:
            if httpx.get(url + "/health", headers={"X-API-Key": KEY}).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if server.poll() is not None or time.monotonic() - started > 60:
            sys.exit(f"the server did not start: {(work / 'serve.err').read_text()[-2000:]}")
        time.sleep(0.01)
    startup = time.monotonic() - started

    one = Load(url, bodies)  # one client, one request at a time
    asyncio.run(one.run(1, 2.0, requests=50))
    one = Load(url, bodies)
    asyncio.run(one.run(1, 60.0, requests=500))
    single = one.latencies

    warm = Load(url, bodies)
    asyncio.run(warm.run(CLIENTS, args.seconds))
    rss_before_swap = tree_rss_mb(server.pid)
    throughput = warm.answered / args.seconds

    bad = Load(url, bodies)
    bad_statuses: dict[int, int] = {}

    async def bad_client(load: Load) -> None:
        kinds = [load.request(body, kind) for body, kind in bad_bodies(work)]
        reader, writer = await asyncio.open_connection(load.host, int(load.port))
        for i in range(1000):
            try:
                status, _ = await load.ask(reader, writer, kinds[i % len(kinds)])
            except (OSError, asyncio.IncompleteReadError, ValueError):  # a 413 may close the connection
                status = -1
                reader, writer = await asyncio.open_connection(load.host, int(load.port))
            bad_statuses[status] = bad_statuses.get(status, 0) + 1
        writer.close()

    asyncio.run(bad.run(CLIENTS, args.seconds, extra=bad_client))
    alive = server.poll() is None and httpx.get(url + "/health", headers={"X-API-Key": KEY}).status_code == 200

    swap = Load(url, bodies)
    swap_result: dict = {}

    async def swapper(load: Load) -> None:
        await asyncio.sleep(args.seconds / 3)
        async with httpx.AsyncClient(base_url=url, headers={"X-API-Key": KEY}, timeout=120) as session:
            answer = await session.post("/model", json={"path": str(swap_to)})
        swap_result.update(status=answer.status_code, done=time.monotonic(), version=answer.json()["model"]["version"])

    asyncio.run(swap.run(CLIENTS, args.seconds, extra=swapper))
    after = [v for sent, v in swap.versions if sent > swap_result["done"]]

    # The soak's baseline: the model swapped in, warmed up by the swap phase's requests (another model's
    # runtime holds other buffers, so the RSS before the swap is no baseline for a leak).
    rss_warm = tree_rss_mb(server.pid)
    soak = Load(url, bodies)
    asyncio.run(soak.run(CLIENTS, args.soak_seconds, requests=args.soak_requests))
    rss_soak = tree_rss_mb(server.pid)
    server.send_signal(signal.SIGTERM)
    exit_code = server.wait(60)

    five = sum(n for s, n in bad_statuses.items() if s >= 500) + sum(n for s, n in bad.statuses.items() if s >= 500)
    rows = [
        {"measure": "throughput, 16 clients (images/s)", "served": f"{throughput:.0f}",
         "in-process": f"{local['throughput']:.0f} (predict_files, batch 16)",
         "ratio": f"{throughput / local['throughput']:.2f}", "goal": ">= 0.8"},
        {"measure": "latency p50, 1 client (ms)", "served": f"{np.median(single) * 1000:.1f}",
         "in-process": f"{local['batch1_p50'] * 1000:.1f} (one image)",
         "ratio": f"+{(np.median(single) - local['batch1_p50']) * 1000:.1f} ms", "goal": "<= +5 ms"},
        {"measure": "latency p99, 1 client / 16 clients (ms)", "served": f"{np.quantile(single, 0.99) * 1000:.1f} / "
         f"{warm.quantile(0.99) * 1000:.1f}", "in-process": "", "ratio": "", "goal": "reported"},
        {"measure": "swap under load: failed / lost / old version after", "served":
         f"{swap.answered - swap.statuses.get(200, 0) + len(swap.errors)} / "
         f"{swap.sent - swap.answered - len(swap.errors)} / {sum(v != swap_result['version'] for v in after)} of "
         f"{len(after)}",
         "in-process": f"POST /model {swap_result['status']}", "ratio": "", "goal": "0 / 0 / 0"},
        {"measure": "1,000 bad requests under load: 5xx / server up", "served": f"{five} / {'yes' if alive else 'NO'}",
         "in-process": ", ".join(f"{s}: {n}" for s, n in sorted(bad_statuses.items())), "ratio": "", "goal": "0 / yes"},
        {"measure": "good p99 with bad requests (ms)", "served": f"{bad.quantile(0.99) * 1000:.1f}",
         "in-process": f"{warm.quantile(0.99) * 1000:.1f} (without)",
         "ratio": f"{bad.quantile(0.99) / warm.quantile(0.99):.2f}", "goal": "<= 2"},
        {"measure": "server RSS after the swap (MB)", "served": f"{rss_warm:.0f}",
         "in-process": f"{rss_before_swap:.0f} (before)", "ratio": f"{rss_warm / rss_before_swap:.3f}",
         "goal": "reported"},
        {"measure": f"server RSS after soak ({soak.answered} requests, MB)", "served": f"{rss_soak:.0f}",
         "in-process": f"{rss_warm:.0f} (after warm-up)", "ratio": f"{rss_soak / rss_warm:.3f}", "goal": "<= 1.05"},
        {"measure": "start-up to /health 200 (s)", "served": f"{startup:.2f}", "in-process": "", "ratio": "",
         "goal": "< 3"},
        {"measure": "exit code after SIGTERM", "served": str(exit_code), "in-process": "", "ratio": "", "goal": "0"},
    ]
    print(table(rows, ["measure", "served", "in-process", "ratio", "goal"]))
    write_json(args.json, {"rows": rows, "cpu": cpu_name()})


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f", {os.cpu_count()} cores"
    return "unknown"


if __name__ == "__main__":
    main()
