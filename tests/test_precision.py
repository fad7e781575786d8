"""Precision, memory order, threads and accelerator: what each changes, and what each refuses."""

import json

import pytest
import torch
from cli_helpers import TINY_RUN, expect_error

import cvm_lightning.model.gpu
from cvm_lightning import hardware
from cvm_lightning.app.cli import main
from cvm_lightning.model import CVMModule
from cvm_lightning.model.encoder import VisualEncoder
from cvm_lightning.training.baselines import ClassifierNet

needs_bf16 = pytest.mark.skipif(not hardware.native_bf16(), reason="this CPU has no native bfloat16")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (--accelerator gpu)")


@needs_bf16
def test_bf16_classifier_returns_float32_logits_close_to_float32_arithmetic():
    torch.manual_seed(0)
    fp32 = ClassifierNet("reduced_resnet18", 10, input_size=32).eval()
    bf16 = ClassifierNet("reduced_resnet18", 10, input_size=32, precision="bf16-mixed").eval()
    bf16.load_state_dict(fp32.state_dict())
    x = torch.rand(16, 3, 32, 32)
    with torch.no_grad():
        exact, mixed = fp32(x), bf16(x)
    assert mixed.dtype == torch.float32, "the strategies' losses get float32 logits"
    assert not torch.equal(exact, mixed), "bf16-mixed really computes in bfloat16"
    assert (mixed - exact).abs().max() < 0.05 * exact.abs().max()


@needs_bf16
def test_cvm_under_bf16_autocast_keeps_unit_embeddings_and_similarities_in_float32(digit_bank):
    module = CVMModule(digit_bank, backbone="reduced_resnet18", in_chans=1, buffer_size=0)
    module.start_experience([0, 1, 2])
    x, y = torch.rand(8, 1, 32, 32), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = module.embed(x)
        logits = module(x)
        loss, _ = module.training_loss(x, y, offer=False)
    assert z.dtype == logits.dtype == loss.dtype == torch.float32
    assert torch.allclose(z.norm(dim=-1), torch.ones(8), atol=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in module.head.parameters())


@needs_bf16
@pytest.mark.slow
def test_a_bf16_run_trains_cvm_and_the_baselines(tmp_path):
    out = tmp_path / "run"
    assert main(["run", "--strategies", "cvm,replay,ncm", "--precision", "bf16-mixed", "--epochs", "1", "--buffer",
                 "40", "--no-progress", "--backbone", "mobilenetv3_small_050", "--input-size", "16",
                 "--out", str(out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["precision"] == "bf16-mixed"
    for name, result in results["strategies"].items():
        assert len(result["accuracy_matrix"]) == 5
        assert result["final_avg_accuracy"] > 0.25, f"{name} learns digits in bf16 (chance 0.1)"


def test_channels_last_changes_the_memory_order_not_the_features():
    torch.manual_seed(0)
    contiguous = VisualEncoder("reduced_resnet18", input_size=32).eval()
    channels_last = VisualEncoder("reduced_resnet18", input_size=32, channels_last=True).eval()
    channels_last.load_state_dict(contiguous.state_dict())
    conv = next(m for m in channels_last.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(contiguous(x), channels_last(x), atol=1e-4)


def test_bf16_on_a_cpu_without_it_is_refused_before_anything_is_written(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(hardware, "native_bf16", lambda: False)
    out = tmp_path / "out"
    expect_error(["run", *TINY_RUN, "--data-root", str(workspace["data"]), "--precision", "bf16-mixed",
                  "--out", str(out)], "--precision 32-true", capsys, tmp_path)
    assert not out.exists()


@pytest.mark.parametrize("flags,fix", [
    (["--threads", "0"], "--threads must be an integer >= 1"),
    (["--threads", str(hardware.available_cores() + 1)], f"pass at most {hardware.available_cores()}"),
])
def test_bad_precision_and_threads_are_one_clear_error(flags, fix, workspace, tmp_path, capsys):
    out = tmp_path / "out"
    expect_error(["run", *TINY_RUN, "--data-root", str(workspace["data"]), *flags, "--out", str(out)], fix, capsys,
                 tmp_path)
    assert not out.exists()


def test_threads_are_applied_and_a_run_resumes_with_another_count(workspace, tmp_path, capsys):
    before = torch.get_num_threads()
    out = tmp_path / "out"
    try:
        assert main(["run", *TINY_RUN, "--data-root", str(workspace["data"]), "--threads", "1", "--out", str(out)]) == 0
        assert torch.get_num_threads() == 1
        # The thread count changes the speed, not the results: a run killed before its results continues
        # with another count, and keeps what it had finished.
        (out / "results.json").unlink()
        assert main(["run", *TINY_RUN, "--data-root", str(workspace["data"]), "--out", str(out)]) == 0
        assert (out / "results.json").is_file() and "cvm: finished earlier, kept" in capsys.readouterr().out
    finally:
        torch.set_num_threads(before)


def test_a_gpu_run_without_a_gpu_is_refused_before_anything_is_written(workspace, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cvm_lightning.model.gpu, "gpu", lambda: (None, "none (torch built for the CPU only)"))
    out = tmp_path / "out"
    expect_error(["run", *TINY_RUN, "--data-root", str(workspace["data"]), "--accelerator", "gpu",
                  "--out", str(out)], "Use --accelerator cpu", capsys, tmp_path)
    assert not out.exists()


@needs_cuda
@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ["--strategies", "cvm,er_ace,der,scr,icarl,ewc", "--buffer", "16"],
    ["--strategies", "cvm,replay,er_aml", "--buffer", "16", "--mini-experience-size", "8", "--batch-size", "4",
     "--anytime-every", "16", "--no-recalibrate-bn"],
    ["--strategies", "cvm,naive,ncm", "--freeze-backbone", "--augment", "none"],  # cached features meet the GPU
], ids=["boundary-aware", "task-free", "frozen-backbone"])
def test_every_strategy_trains_and_is_scored_on_the_gpu(flags, workspace, tmp_path):
    out = tmp_path / "run"
    torch.cuda.reset_peak_memory_stats()
    args = [*TINY_RUN, "--data-root", str(workspace["data"]), "--accelerator", "gpu", *flags, "--out", str(out)]
    assert main(["run", *args]) == 0
    assert torch.cuda.max_memory_allocated() > 0, "the strategies ran on the GPU"
    results = json.loads((out / "results.json").read_text())
    assert results["config"]["accelerator"] == "gpu"
    for name, result in results["strategies"].items():
        assert len(result["accuracy_matrix"]) == 2, name
        assert 0.0 <= result["final_avg_accuracy"] <= 1.0 and result["nonfinite_loss_step"] is None, name
