import os

import pytest
import pytorch_lightning as pl
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader

from cvm_lightning.metrics import (
    AccuracyMatrix,
    AverageAccuracy,
    BackwardTransfer,
    ContinualMetricsCallback,
    Forgetting,
    ForwardTransfer,
)
from cvm_lightning.metrics import functional as F

# One experience's accuracy goes 0.90, 0.95, 0.70 (replay helped, then it forgot).
R3 = torch.tensor([
    [0.90, 0.10, 0.00],
    [0.95, 0.80, 0.20],
    [0.70, 0.60, 0.85],
])


def test_forgetting_modes_on_the_issue_example():
    assert F.forgetting(R3, mode="max").item() == pytest.approx(((0.95 - 0.70) + (0.80 - 0.60)) / 2)
    assert F.forgetting(R3, mode="avalanche").item() == pytest.approx(((0.90 - 0.70) + (0.80 - 0.60)) / 2)
    assert F.forgetting(torch.tensor([[0.9]])).item() == 0.0
    one_old = torch.tensor([[0.90, 0.0], [0.95, 0.9], [0.70, 0.9]])  # 3 steps, first column only matters
    assert F.forgetting(torch.cat([one_old, torch.zeros(3, 1)], 1), mode="max").item() == pytest.approx(
        (0.25 + 0.0) / 2
    )


def test_hand_computed_values():
    assert F.average_accuracy(R3).item() == pytest.approx((0.70 + 0.60 + 0.85) / 3)
    assert F.average_incremental_accuracy(R3).item() == pytest.approx(
        (0.90 + (0.95 + 0.80) / 2 + (0.70 + 0.60 + 0.85) / 3) / 3
    )
    assert F.backward_transfer(R3).item() == pytest.approx(((0.70 - 0.90) + (0.60 - 0.80)) / 2)
    reference = torch.tensor([0.1, 0.05, 0.1])
    assert F.forward_transfer(R3, reference).item() == pytest.approx(((0.10 - 0.05) + (0.20 - 0.10)) / 2)
    with pytest.raises(ValueError):
        F.forward_transfer(R3, reference[:2])
    with pytest.raises(ValueError):
        F.forgetting(R3, mode="min")


def test_rows_not_evaluated_are_left_out_of_each_metric():
    nan = float("nan")
    R = torch.tensor([  # evaluated after experiences 1 and 3 only (every 2nd, and the last)
        [nan, nan, nan, nan],
        [0.90, 0.80, 0.10, 0.00],
        [nan, nan, nan, nan],
        [0.60, 0.70, 0.50, 0.85],
    ])
    assert F.average_accuracy(R).item() == pytest.approx((0.60 + 0.70 + 0.50 + 0.85) / 4)
    assert F.average_incremental_accuracy(R).item() == pytest.approx(
        ((0.90 + 0.80) / 2 + (0.60 + 0.70 + 0.50 + 0.85) / 4) / 2
    )
    # Experience 2 was never evaluated before the last row: it has no best accuracy to forget from.
    assert F.forgetting(R).item() == pytest.approx(((0.90 - 0.60) + (0.80 - 0.70)) / 2)
    assert F.backward_transfer(R).item() == pytest.approx(0.70 - 0.80)  # only R[1, 1] is on the diagonal
    assert F.forward_transfer(R, torch.tensor([0.0, 0.0, 0.05, 0.0])).item() == pytest.approx(0.10 - 0.05)
    with pytest.raises(ValueError, match="last row"):
        F.average_accuracy(R[:3, :3])
    metric = Forgetting(4)
    for i, j, preds, target in predictions_for(torch.nan_to_num(R)):
        if i in (1, 3):
            metric.update(preds, target, i, j)
    assert metric.compute().item() == pytest.approx(F.forgetting(R).item(), abs=1e-6)


def predictions_for(R: torch.Tensor, n: int = 20):
    """Predictions that realise accuracy R[i, j] exactly on n samples per cell."""
    for i in range(len(R)):
        for j in range(len(R)):
            target = torch.arange(n) % 3
            preds = target.clone()
            wrong = n - round(float(R[i, j]) * n)
            preds[:wrong] = (preds[:wrong] + 1) % 3
            yield i, j, preds, target


def test_metric_classes_match_the_functional_forms_from_predictions():
    metrics = {
        "matrix": AccuracyMatrix(3),
        "avg": AverageAccuracy(3),
        "inc": AverageAccuracy(3, incremental=True),
        "fmax": Forgetting(3),
        "fava": Forgetting(3, mode="avalanche"),
        "bwt": BackwardTransfer(3),
        "fwt": ForwardTransfer(3, reference=torch.tensor([0.1, 0.05, 0.1])),
    }
    for i, j, preds, target in predictions_for(R3):
        logits = torch.nn.functional.one_hot(preds, 3).float()  # scores work too
        for metric in metrics.values():
            metric.update(logits, target, i, j)
    assert torch.allclose(metrics["matrix"].compute(), R3)
    assert metrics["avg"].compute().item() == pytest.approx(F.average_accuracy(R3).item(), abs=1e-6)
    assert metrics["inc"].compute().item() == pytest.approx(F.average_incremental_accuracy(R3).item(), abs=1e-6)
    assert metrics["fmax"].compute().item() == pytest.approx(0.225, abs=1e-6)
    assert metrics["fava"].compute().item() == pytest.approx(0.2, abs=1e-6)
    assert metrics["bwt"].compute().item() == pytest.approx(-0.2, abs=1e-6)
    assert metrics["fwt"].compute().item() == pytest.approx(0.075, abs=1e-6)


def test_partial_streams_use_the_rows_so_far_and_rows_can_be_replaced():
    metric = Forgetting(3, mode="avalanche")
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 1]), 0, 0)
    metric.update(torch.tensor([1, 0]), torch.tensor([1, 1]), 1, 0)
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 1]), 1, 1)
    assert metric.compute().item() == pytest.approx(0.5)
    metric.reset_row(1)
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 1]), 1, 0)
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 1]), 1, 1)
    assert metric.compute().item() == pytest.approx(0.0)


def _ddp_worker(rank: int, world: int, port: int, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    metrics = [AccuracyMatrix(3), Forgetting(3), BackwardTransfer(3), AverageAccuracy(3)]
    for i, j, preds, target in predictions_for(R3):
        half = slice(rank * 10, rank * 10 + 10)  # each process sees half of every cell
        for metric in metrics:
            metric.update(preds[half], target[half], i, j)
    values = [m.compute() for m in metrics]
    if rank == 0:
        queue.put([v.tolist() for v in values])
    dist.destroy_process_group()


def test_ddp_two_processes_equal_one_process():
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    mp.start_processes(_ddp_worker, args=(2, port, queue), nprocs=2, start_method="spawn", join=True)
    matrix, forgetting, bwt, avg = queue.get(timeout=60)
    assert torch.allclose(torch.tensor(matrix), R3)
    assert forgetting == pytest.approx(F.forgetting(R3).item(), abs=1e-6)
    assert bwt == pytest.approx(F.backward_transfer(R3).item(), abs=1e-6)
    assert avg == pytest.approx(F.average_accuracy(R3).item(), abs=1e-6)


def test_equal_to_avalanche_forgetting_and_bwt_on_the_same_predictions():
    """A real Avalanche run: its own metrics and our plugin see the same predictions."""
    from avalanche.evaluation.metrics import bwt_metrics, forgetting_metrics
    from avalanche.training import Naive
    from avalanche.training.plugins import EvaluationPlugin

    from cvm_lightning.metrics.avalanche_plugin import AccuracyMatrixPlugin
    from cvm_lightning.streams import StreamConfig, build_benchmark
    from cvm_lightning.training import ClassifierNet

    pl.seed_everything(0)
    bench = build_benchmark("split-digits", StreamConfig(seed=0, n_experiences=5))
    model = ClassifierNet("mobilenetv3_small_050", 10, in_chans=1, input_size=16)
    recorder = AccuracyMatrixPlugin(5)
    evaluator = EvaluationPlugin(
        forgetting_metrics(experience=False, stream=True), bwt_metrics(stream=True), loggers=[]
    )
    strategy = Naive(
        model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.05), train_mb_size=64, train_epochs=1,
        eval_mb_size=256, plugins=[recorder], evaluator=evaluator,
    )
    for experience in bench.train_stream:
        strategy.train(experience)
        last = strategy.eval(bench.test_stream)
    R = recorder.matrix.compute()
    forgetting = [v for k, v in last.items() if k.startswith("StreamForgetting")][0]
    bwt = [v for k, v in last.items() if k.startswith("StreamBWT")][0]
    assert F.forgetting(R, mode="avalanche").item() == pytest.approx(forgetting, abs=1e-6)
    assert F.backward_transfer(R).item() == pytest.approx(bwt, abs=1e-6)


def test_callback_drops_into_a_plain_trainer_and_logs(digit_bank, tmp_path):
    """One fit per experience, test experiences as validation loaders: nothing else changes."""
    from pytorch_lightning.loggers import CSVLogger

    from cvm_lightning.model import CVMModule
    from cvm_lightning.streams import StreamConfig, build_benchmark

    pl.seed_everything(0)
    bench = build_benchmark("split-digits", StreamConfig(seed=0, n_experiences=2))
    module = CVMModule(digit_bank, backbone="mobilenetv3_small_050", in_chans=1, input_size=16, buffer_size=0)
    callback = ContinualMetricsCallback(n_experiences=2)
    tests = [DataLoader(e.dataset, batch_size=128) for e in bench.test_stream]
    trainer = pl.Trainer(
        max_epochs=1, callbacks=[callback], logger=CSVLogger(tmp_path), enable_progress_bar=False,
        enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.validate(module, tests, verbose=False)  # before training: FWT reference
    assert callback.reference is not None and callback.reference.shape == (2,)
    for k, experience in enumerate(bench.train_stream):
        trainer.fit_loop.max_epochs = 4 * (k + 1)
        trainer.fit(module, DataLoader(experience.dataset, batch_size=64, shuffle=True), val_dataloaders=tests)
    R = callback.matrix.compute()
    assert not torch.isnan(R).any()
    # 5 classes an experience: chance is 0.2. This tiny backbone at 16 px reached 0.36 on experience 1.
    assert R[0, 0] > 0.3 and R[1, 1] > 0.3
    assert set(callback.summary) == {"avg_acc", "avg_inc_acc", "forgetting", "bwt", "fwt"}
    assert "cl/forgetting" in trainer.callback_metrics
    logged = (tmp_path / "lightning_logs").rglob("metrics.csv")
    assert any("cl/avg_acc" in path.read_text() for path in logged)
    assert list(tmp_path.rglob("accuracy_matrix.json"))
