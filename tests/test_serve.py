"""``cvm serve``: a real server on a free port, talked to over HTTP with a real client.

Each server is ``python -m cvm_lightning serve`` in its own session, as on
the line; the tests read its answers, its ``/drift`` and ``/metrics``, its
log and its exit code.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import CLASSES, expect_error, write_decompression_bomb
from PIL import Image

from cvm_lightning.app.cli import main

httpx = pytest.importorskip("httpx")
pytest.importorskip("litserve", reason="cvm serve needs the serve extra: pip install 'cvm_lightning[serve]'")

KEY = "a-test-key-of-thirty-two-chars!!"
START_SECONDS = 90
pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Server:
    """A running ``cvm serve``: its URL, a client, its output so far, and a graceful stop."""

    def __init__(self, args: list[str], folder: Path, env: dict | None = None, key: str | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path, self.out_path = folder / f"serve-{self.port}.err", folder / f"serve-{self.port}.out"
        self.headers = {"X-API-Key": key} if key else {}
        environment = {**os.environ, **(env or {})}
        environment.pop("CVM_API_KEY", None) if key is None else environment.setdefault("CVM_API_KEY", key)
        with open(self.out_path, "w") as out, open(self.log_path, "w") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cvm_lightning", "serve", *args, "--port", str(self.port)],
                stdout=out, stderr=err, env=environment, start_new_session=True,
                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        self.client = httpx.Client(base_url=self.url, headers=self.headers, timeout=60)
        deadline = time.monotonic() + START_SECONDS
        while time.monotonic() < deadline:
            assert self.process.poll() is None, f"the server stopped: {self.log()}"
            try:
                if self.client.get("/health").status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"no /health within {START_SECONDS} s: {self.log()}")

    def log(self) -> str:
        return self.log_path.read_text()

    def output(self) -> str:
        return self.out_path.read_text()

    def predict(self, image: bytes, **kwargs) -> httpx.Response:
        return self.client.post("/predict", content=image, headers={"Content-Type": "image/png"}, **kwargs)

    def stop(self, signum: int = signal.SIGTERM, group: bool = False) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signum) if group else self.process.send_signal(signum)
        code = self.process.wait(60)
        self.client.close()
        return code


@contextmanager
def serving(args: list[str], folder: Path, **kwargs):
    server = Server([str(a) for a in args], folder, **kwargs)
    try:
        yield server
    finally:
        server.stop()


def png(path: Path) -> bytes:
    return Path(path).read_bytes()


def held_out(workspace) -> list[Path]:
    return sorted((workspace["data"] / "test").rglob("*.png"))


@pytest.fixture(scope="module")
def models(workspace, tmp_path_factory):
    """The workspace's checkpoint and its TorchScript export, plus an ONNX export and one at another image size."""
    root = tmp_path_factory.mktemp("served")
    onnx, other = root / "model.onnx", root / "model-24px.onnx"
    assert main(["export", "--checkpoint", str(workspace["ckpt"]), "--format", "onnx", "--out", str(onnx)]) == 0
    assert main(["export", "--checkpoint", str(workspace["ckpt"]), "--format", "onnx", "--out", str(other),
                 "--image-size", "24"]) == 0
    return {"root": root, "onnx": onnx, "pt": workspace["pt"], "ckpt": workspace["ckpt"], "other_size": other}


@pytest.fixture(scope="module")
def line(models, workspace):
    """An ONNX model served off loopback (so with an API key), with a drift reference, in batches of up to 8."""
    with serving(["--model", models["onnx"], "--reference", workspace["data"] / "test", "--host", "0.0.0.0",
                  "--max-batch-size", "8", "--batch-timeout", "0.05"], models["root"], key=KEY) as server:
        server.model = models["onnx"]
        yield server


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def expected_rows(model: Path, files: list[Path]) -> list[dict]:
    from cvm_lightning.deploy.predict import predict_files

    return predict_files(model, files).rows


def check_answers(server: Server, model: Path, files: list[Path]) -> None:
    for path, row in zip(files, expected_rows(model, files)):
        answer = server.predict(png(path))
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert (body["class_name"], body["class_id"]) == (row["class_name"], row["class_id"])
        assert body["score"] == pytest.approx(row["similarity"], abs=1e-4)
        assert body["top_k"][0]["class_name"] == body["class_name"] and len(body["top_k"]) == 3
        assert [t["score"] for t in body["top_k"]] == sorted((t["score"] for t in body["top_k"]), reverse=True)
        assert body["model"] == {"name": model.name, "version": sha256(model)}


def test_an_onnx_server_answers_as_cvm_predict_does_raw_or_multipart(line, models, workspace):
    files = held_out(workspace)
    check_answers(line, models["onnx"], files)
    row = expected_rows(models["onnx"], files[:1])[0]
    form = line.client.post("/predict", files={"file": ("frame.png", png(files[0]), "image/png")})
    assert form.status_code == 200 and form.json()["class_name"] == row["class_name"]


@pytest.mark.parametrize("kind", ["pt", "ckpt"])
def test_torchscript_and_checkpoint_servers_answer_as_cvm_predict_does(models, workspace, kind):
    with serving(["--model", models[kind]], models["root"]) as server:
        check_answers(server, models[kind], held_out(workspace)[::3])


def test_concurrent_requests_are_batched_and_each_gets_its_own_answer(line, models, workspace):
    files = held_out(workspace)
    rows = expected_rows(models["onnx"], files)

    def batch_count() -> tuple[float, float]:
        text = line.client.get("/metrics").text
        value = {name: float(v) for name, v in (row.split() for row in text.splitlines()
                                                if row.startswith(("cvm_batch_size_sum", "cvm_batch_size_count")))}
        return value.get("cvm_batch_size_sum", 0.0), value.get("cvm_batch_size_count", 0.0)

    images_before, batches_before = batch_count()
    answers: dict[int, dict] = {}

    def ask(i: int) -> None:
        answers[i] = line.predict(png(files[i])).json()

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(files))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [answers[i]["class_name"] for i in range(len(files))] == [r["class_name"] for r in rows]
    deadline = time.monotonic() + 10
    while (counts := batch_count())[0] - images_before < len(files) and time.monotonic() < deadline:
        time.sleep(0.1)  # the logger process counts batches a moment after they are answered
    images, batches = counts[0] - images_before, counts[1] - batches_before
    assert images == len(files) and batches < images, f"{images} images in {batches} batches: none was batched"


def bad_requests(tmp_path: Path) -> dict[str, tuple[int, dict]]:
    bomb = write_decompression_bomb(tmp_path / "bomb.png").read_bytes()
    return {
        "not an image": (400, {"content": b"GIF89a this is not really an image", "headers": {"Content-Type":
                                                                                             "image/gif"}}),
        "empty body": (400, {"content": b"", "headers": {"Content-Type": "image/png"}}),
        "decompression bomb": (400, {"content": bomb, "headers": {"Content-Type": "image/png"}}),
        "wrong content type": (415, {"content": b'{"image": "cat.png"}', "headers": {"Content-Type":
                                                                                     "application/json"}}),
        "too large": (413, {"content": b"\x89PNG" + b"\0" * (11 * 2**20), "headers": {"Content-Type": "image/png"}}),
        "form without a file": (400, {"content": b'--XyZ\r\nContent-Disposition: form-data; name="image"\r\n\r\n'
                                                 b"cat.png\r\n--XyZ--\r\n",
                                      "headers": {"Content-Type": "multipart/form-data; boundary=XyZ"}}),
    }


def test_every_bad_request_gets_a_one_line_4xx_and_the_server_keeps_serving(line, workspace, tmp_path):
    good = png(held_out(workspace)[0])
    for what, (status, request) in bad_requests(tmp_path).items():
        answer = line.client.post("/predict", **request)
        assert answer.status_code == status, (what, answer.status_code, answer.text)
        detail = answer.json()["detail"]
        assert isinstance(detail, str) and "\n" not in detail and "Traceback" not in detail, (what, detail)
        assert str(workspace["root"]) not in detail and "/tmp" not in detail and "0x" not in detail, (what, detail)
        assert line.predict(good).status_code == 200, f"the server stopped serving after {what}"
    for route in ("/predict", "/", "/drift", "/metrics", "/health"):
        for headers in ({}, {"X-API-Key": "wrong-" + KEY}, {"Authorization": "Bearer nope"}):
            answer = httpx.request("POST" if route == "/predict" else "GET", line.url + route, headers=headers,
                                   content=good)
            assert answer.status_code == 401, (route, headers, answer.status_code)
            assert "API key" in answer.json()["detail"]
    bearer = httpx.post(line.url + "/predict", content=good, headers={"Authorization": f"Bearer {KEY}",
                                                                      "Content-Type": "image/png"})
    assert bearer.status_code == 200
    assert "Traceback" not in line.log()


def test_metrics_count_requests_by_status_latency_batches_drift_and_the_version(line, models, workspace):
    line.predict(png(held_out(workspace)[0]))
    line.client.post("/predict", content=b"", headers={"Content-Type": "image/png"})
    text = line.client.get("/metrics").text
    assert 'cvm_requests_total{path="/predict",status="200"}' in text
    assert 'cvm_requests_total{path="/predict",status="400"}' in text
    assert 'cvm_request_duration_seconds_bucket{le="0.01",path="/predict"}' in text
    assert "cvm_batch_size_count" in text
    assert f'cvm_model_info{{name="model.onnx",version="{sha256(models["onnx"])}"}} 1.0' in text
    assert 'cvm_drift{class_name="cat"}' in text


def test_the_status_page_shows_model_traffic_drift_and_swaps_in_chromium(models, workspace, tmp_path):
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (`apt-get install chromium`; .ci/run installs it)")
    with serving(["--model", models["onnx"], "--reference", workspace["data"] / "test"], tmp_path) as server:
        for path in held_out(workspace):
            assert server.predict(png(path)).status_code == 200
        page = server.client.get("/").text
        assert "<script" not in page and "http://" not in page.replace(server.url, "") and "https://" not in page
        dom = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp_path / 'c'}",
             "--dump-dom", server.url + "/"], capture_output=True, text=True, timeout=120).stdout
    assert "model.onnx" in dom and sha256(models["onnx"]) in dom
    assert all(name in dom for name in CLASSES)
    served = dom.split('id="served">')[1].split("<")[0]
    assert int(served) == len(held_out(workspace))
    assert 'id="p50">' in dom and "ms</b>" in dom
    assert "none since the server started" in dom


def dark(source: Path, target: Path, factor: float = 0.15) -> Path:
    from PIL import ImageEnhance

    for path in sorted(source.rglob("*.png")):
        out = target / path.relative_to(source)
        out.parent.mkdir(parents=True, exist_ok=True)
        ImageEnhance.Brightness(Image.open(path).convert("RGB")).enhance(factor).save(out)
    return target


def fresh_images(root: Path, count: int, seed: int) -> Path:
    """More images of the workspace's classes (the same colours, other noise)."""
    from cli_helpers import _write_images

    for c, name in enumerate(CLASSES):
        _write_images(root / name, count, 40 + 50 * c, seed + c)
    return root


def drift_of(server: Server, served: int) -> dict:
    """``/drift`` once the logger process, which reads its queue on its own time, has counted ``served`` images."""
    deadline = time.monotonic() + 120
    while True:
        answer = server.client.get("/drift")
        report = answer.json() if answer.status_code == 200 else {}
        if report.get("served", -1) >= served:
            return report
        assert time.monotonic() < deadline, f"the drift report never counted {served} images: {answer.text}"
        time.sleep(0.1)


def test_dark_images_raise_drift_once_and_an_update_clears_it(models, workspace, tmp_path):
    served = tmp_path / "line.onnx"
    shutil.copy(models["onnx"], served)
    darkened = dark(workspace["data"], tmp_path / "dark")
    shuffled = np.random.default_rng(0).permutation  # a line sends its classes mixed, not one after another
    frames = list(shuffled(sorted((darkened / "train").rglob("*.png"))))
    with serving(["--model", served, "--reference", workspace["data"] / "test", "--drift-window", "32"], tmp_path,
                 key=KEY) as server:
        served = 0
        for path in held_out(workspace):
            server.predict(png(path))
            served += 1
        assert drift_of(server, served)["drifted"] == [], "the reference images' own kind does not drift"
        for _ in range(3):
            for path in frames:
                assert server.predict(png(path)).status_code == 200
                served += 1
        report = drift_of(server, served)
        assert report["all"]["state"] == "drift" and "all images" in report["drifted"], report
        assert "cvm learn" in report["next_step"]
        assert report["all"]["z_nearest"] > 3 or report["all"]["z_margin"] > 3 or report["all"]["z_nearest"] < -3
        for window in report["drifted"]:
            started, ended = (server.log().count(f"drift {what} ({window})") for what in ("started", "ended"))
            assert started == ended + 1, f"a drift is logged once, when it starts: {server.log()}"
        updated = tmp_path / "updated.ckpt"
        assert main(["learn", "--checkpoint", str(workspace["ckpt"]), "--data", str(darkened), "--epochs", "5",
                     "--out", str(updated)]) == 0
        new = tmp_path / "new.onnx"
        assert main(["export", "--checkpoint", str(updated), "--format", "onnx", "--out", str(new)]) == 0
        # The line now sends the update's conditions: held-out images of them become the reference.
        reference = dark(fresh_images(tmp_path / "held-out", 24, 500), tmp_path / "held-out-dark")
        swapped = server.client.post("/model", json={"path": str(new), "reference": str(reference)})
        assert swapped.status_code == 200, swapped.text
        assert swapped.json()["model"]["version"] == sha256(new)
        later = dark(fresh_images(tmp_path / "later", 8, 700), tmp_path / "later-dark")  # not trained on either
        for _ in range(2):
            for path in shuffled(sorted(later.rglob("*.png"))):
                assert server.predict(png(path)).json()["model"]["version"] == sha256(new)
                served += 1
        report = drift_of(server, served)
        assert report["drifted"] == [], report
        assert report["all"]["state"] == "ok" and report["model"]["version"] == sha256(new)


def test_a_model_swaps_in_under_load_without_a_failed_or_lost_request(models, workspace, tmp_path):
    served = tmp_path / "line.onnx"
    shutil.copy(models["onnx"], served)
    frame = png(held_out(workspace)[0])
    with serving(["--model", served, "--watch", "--watch-interval", "0.2"], tmp_path, key=KEY) as server:
        # A file that fails its checks is refused, and the old model keeps serving.
        refused = server.client.post("/model", json={"path": str(models["other_size"])})
        assert refused.status_code == 422 and "--image-size 32" in refused.json()["detail"], refused.text
        broken = tmp_path / "broken.onnx"
        broken.write_bytes(models["onnx"].read_bytes()[:2000])
        refused = server.client.post("/model", json={"path": str(broken)})
        assert refused.status_code == 422 and "not a readable CVM model" in refused.json()["detail"]
        assert server.predict(frame).json()["model"]["version"] == sha256(models["onnx"])

        versions: list[str] = []
        failures: list[str] = []
        stop = threading.Event()

        def client() -> None:
            with httpx.Client(base_url=server.url, headers=server.headers, timeout=60) as own:
                while not stop.is_set():
                    try:
                        answer = own.post("/predict", content=frame, headers={"Content-Type": "image/png"})
                        versions.append(answer.json()["model"]["version"]) if answer.status_code == 200 else \
                            failures.append(answer.text)
                    except httpx.HTTPError as err:
                        failures.append(repr(err))

        threads = [threading.Thread(target=client) for _ in range(4)]
        for thread in threads:
            thread.start()
        time.sleep(1.0)
        # `cvm export` writes the new file beside the served one and renames it over it, as here.
        assert main(["export", "--checkpoint", str(workspace["ckpt"]), "--format", "onnx", "--out",
                     str(tmp_path / "new.onnx"), "--image-size", "32", "--quantize", "none"]) == 0
        new_version = sha256(tmp_path / "new.onnx")
        os.replace(tmp_path / "new.onnx", served)
        deadline = time.monotonic() + 30
        while new_version not in versions and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        stop.set()
        for thread in threads:
            thread.join()
        assert failures == []
        assert new_version in versions
        first_new = versions.index(new_version)
        assert set(versions[first_new:]) == {new_version}, "after the swap, every answer names the new version"
        metrics = server.client.get("/metrics").text
        assert f'version="{new_version}"}} 1.0' in metrics
        # The same file again: a reload swaps in the same version.
        again = server.client.post("/model")
        assert again.status_code == 200 and again.json()["model"]["version"] == new_version
    assert server.log().count("refused") == 2


@pytest.mark.parametrize("how", ["SIGTERM", "Ctrl-C"])
def test_a_stop_answers_the_requests_in_flight_then_exits_0(models, workspace, tmp_path, how):
    frame = png(held_out(workspace)[0])
    server = Server(["--model", str(models["onnx"]), "--batch-timeout", "1.5"], tmp_path)
    answers = []
    asker = threading.Thread(target=lambda: answers.append(server.predict(frame)))
    asker.start()
    time.sleep(0.5)  # the request waits in its batch
    code = server.stop(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT, group=how == "Ctrl-C")
    asker.join()
    assert code == 0, server.log()
    assert answers and answers[0].status_code == 200, (answers and answers[0].text, server.log())
    assert "stopped" in server.output() and "Traceback" not in server.log(), server.log()


def test_serving_an_onnx_model_never_imports_torch(models, workspace, tmp_path):
    fake = tmp_path / "fake" / "torch"
    fake.mkdir(parents=True)
    marker = tmp_path / "torch-imported"
    (fake / "__init__.py").write_text(f"open({str(marker)!r}, 'a').write('imported\\n')\n"
                                      "raise ImportError('torch is not allowed here')\n")
    env = {"PYTHONPATH": os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")])}
    with serving(["--model", models["onnx"], "--reference", workspace["data"] / "test"], tmp_path, env=env) as server:
        answer = server.predict(png(held_out(workspace)[0]))
        assert answer.status_code == 200, answer.text
        assert server.client.get("/drift").status_code == 200
    assert not marker.exists(), "a process of the server imported torch"


def test_bad_flags_get_one_error_line_before_anything_listens(models, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("CVM_API_KEY", raising=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        expect_error(["serve", "--model", str(models["onnx"]), "--port", str(port)], f"Port {port} on 127.0.0.1 is "
                     "in use", capsys, tmp_path)
    model = ["--model", str(models["onnx"])]
    expect_error(["serve", "--model", str(tmp_path / "missing.onnx")], "No model file at", capsys, tmp_path)
    expect_error(["serve", *model, "--host", "0.0.0.0"], "needs an API key: pass --api-key-file FILE or set "
                 "$CVM_API_KEY", capsys, tmp_path)
    (tmp_path / "empty.key").write_text("\n")
    expect_error(["serve", *model, "--api-key-file", str(tmp_path / "empty.key")], "is empty", capsys, tmp_path)
    expect_error(["serve", *model, "--port", "80"], "--port must be an integer >= 1024", capsys, tmp_path)
    expect_error(["serve", *model, "--max-batch-size", "0"], "--max-batch-size must be an integer >= 1", capsys,
                 tmp_path)
    expect_error(["serve", *model, "--batch-timeout", "-1"], "--batch-timeout must be a number >= 0", capsys,
                 tmp_path)
    expect_error(["serve", *model, "--host", "example.org"], "Unknown --host 'example.org'", capsys, tmp_path)
    expect_error(["serve", *model, "--reference", str(tmp_path / "nowhere")], "No --reference folder", capsys,
                 tmp_path)
    (tmp_path / "notes.txt").write_text("x")
    expect_error(["serve", "--model", str(tmp_path / "notes.txt")], "is not a model file", capsys, tmp_path)


def test_image_pixels_decoded_from_a_body_match_those_of_the_file(workspace):
    from cvm_lightning.image_files import read_image

    path = held_out(workspace)[0]
    assert np.array_equal(read_image(io.BytesIO(png(path)), 24), read_image(path, 24))


def test_the_example_client_prints_each_class_and_the_drift(line, workspace):
    script = Path(__file__).resolve().parents[1] / "examples" / "serve_client.py"
    folder = workspace["data"] / "test" / "cat"
    result = subprocess.run([sys.executable, str(script), str(folder), "--url", line.url], capture_output=True,
                            text=True, timeout=120, env={**os.environ, "CVM_API_KEY": KEY})
    assert result.returncode == 0, result.stderr
    rows = [row.split("\t") for row in result.stdout.splitlines() if "\t" in row]
    expected = expected_rows(line.model, sorted(folder.glob("*.png")))
    assert [r[1] for r in rows] == [e["class_name"] for e in expected]
    assert "drift over the latest 256 images" in result.stdout
    no_server = subprocess.run([sys.executable, str(script), str(folder), "--url", f"http://127.0.0.1:{free_port()}"],
                               capture_output=True, text=True, timeout=60)
    assert no_server.returncode == 2 and "no server at" in no_server.stderr
