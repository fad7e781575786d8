"""How close training gets to what this CPU can do: peak GFLOP/s, each step's FLOPs, achieved rates.

    python benchmarks/limits.py [--backbones reduced_resnet18 mobilenetv3_small_100] [--steps 15] [--rounds 3]
                                [--compile] [--json out.json]

1. The machine's peak: a large matrix product (2048 x 2048) in float32 and
   bfloat16, and a conv-heavy reference (a 3x3 convolution, 128 channels,
   32x32, batch 64), each in the memory orders a backbone can use.
2. Each backbone's training FLOPs per image: the forward counted by
   ``torch.utils.flop_counter``, times 3 for forward + backward.
3. Training steps side by side in this one process, every variant
   alternating over ``--rounds`` rounds (medians): a plain PyTorch loop, the
   same model as a Lightning linear-head module, and ``CVMModule`` (no
   replay), in float32 and ``bf16-mixed``, with and without
   ``channels_last``. ``--compile`` adds ``torch.compile`` on the plain loop
   (its compile time is reported apart).

Utilisation is achieved GFLOP/s over the float32 matrix-product peak (and
over the bfloat16 peak for bf16 rows).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from _lightning import images_per_second
from _report import median_seconds, table, write_json
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from cvm_lightning.concepts import ConceptBank
from cvm_lightning.hardware import native_bf16
from cvm_lightning.model import CVMModule
from cvm_lightning.model.cpu import autocast
from cvm_lightning.training.baselines import ClassifierNet

N_CLASSES = 10
INPUT_SIZE = {"reduced_resnet18": 32}  # others see 64x64: timm stems shrink 32x32 to 1x1
VARIANTS = {  # name: (precision, channels_last)
    "fp32": ("32-true", False),
    "fp32 + channels_last": ("32-true", True),
    "bf16-mixed": ("bf16-mixed", False),
    "bf16-mixed + channels_last": ("bf16-mixed", True),
}


def gflops_per_second(fn, flops: float, repeats: int = 5) -> float:
    fn()  # warm-up
    return flops / median_seconds(fn, repeats) / 1e9


def machine_peak() -> list[dict]:
    """GFLOP/s of a large matrix product and of a 3x3 convolution, per dtype and memory order."""
    rows = []
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        rows.append({"kernel": f"matmul 2048, {dtype}".replace("torch.", ""),
                     "GFLOP/s": gflops_per_second(lambda: x @ y, 2 * 2048**3)})
    conv = torch.nn.Conv2d(128, 128, 3, padding=1, bias=False)
    image = torch.randn(64, 128, 32, 32)
    flops = 2 * 64 * 128 * 128 * 9 * 32 * 32
    for dtype in (torch.float32, torch.bfloat16):
        for channels_last in (False, True):
            order = torch.channels_last if channels_last else torch.contiguous_format
            layer = conv.to(dtype).to(memory_format=order)
            x = image.to(dtype).contiguous(memory_format=order)
            with torch.no_grad():
                rate = gflops_per_second(lambda: layer(x), flops)
            name = f"conv3x3 128ch 32x32 b64, {dtype}".replace("torch.", "") + (
                ", channels_last" if channels_last else ""
            )
            rows.append({"kernel": name, "GFLOP/s": rate})
    return rows


def training_flops(forward) -> float:
    """Training FLOPs of one call of ``forward``: its counted forward FLOPs times 3 (backward = 2x forward).

    torch's counter gives the backward of grouped (depthwise) convolutions
    the FLOPs of dense ones, ten times too many on a MobileNet; on
    ungrouped backbones its counted backward is 2.0x the forward.
    """
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        forward()
    return 3.0 * counter.get_total_flops()


class LinearHeadModule(pl.LightningModule):
    """The baselines' ClassifierNet with cross-entropy and AdamW, as a LightningModule."""

    def __init__(self, net: ClassifierNet) -> None:
        super().__init__()
        self.net = net

    def training_step(self, batch, batch_idx):
        return F.cross_entropy(self.net(batch[0]), batch[1])

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-4)


def plain_rate(
    net: torch.nn.Module, batches: list, steps: int, precision: str, compile_model: bool = False
) -> tuple[float, float]:
    """Images/s of a hand-written loop, and the seconds its first 3 steps took (compilation, when asked)."""
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    model = torch.compile(net) if compile_model else net
    durations = []
    for i in range(steps + 3):
        x, y = batches[i % len(batches)]
        start = time.perf_counter()
        with autocast(precision):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        durations.append(time.perf_counter() - start)
    return len(x) * steps / sum(durations[3:]), sum(durations[:3])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["reduced_resnet18", "mobilenetv3_small_100"])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="add torch.compile variants of the plain loop")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("torch._dynamo").setLevel(logging.ERROR)
    logging.getLogger("pytorch_lightning").setLevel(logging.WARNING)  # one Trainer per measurement
    torch.manual_seed(0)
    variants = VARIANTS if native_bf16() else {k: v for k, v in VARIANTS.items() if v[0] == "32-true"}

    peak = machine_peak()
    fp32_peak, bf16_peak = peak[0]["GFLOP/s"], peak[1]["GFLOP/s"]
    print(f"threads {torch.get_num_threads()}, native bf16: {native_bf16()}")
    print(table([{**r, "GFLOP/s": f"{r['GFLOP/s']:.0f}"} for r in peak], ["kernel", "GFLOP/s"]))

    n = args.batch_size * 4
    data = TensorDataset(torch.rand(n, 3, 32, 32), torch.randint(0, N_CLASSES, (n,)))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    batches = list(loader)
    bank = ConceptBank.from_names([f"class {i}" for i in range(N_CLASSES)])
    all_rows, flop_rows = [], []
    for backbone in args.backbones:
        size = INPUT_SIZE.get(backbone, 64)

        def net(channels_last: bool = False) -> ClassifierNet:  # the loop or the Trainer sets the precision
            return ClassifierNet(backbone, N_CLASSES, input_size=size, channels_last=channels_last)

        def cvm(channels_last: bool = False) -> CVMModule:
            return CVMModule(bank, backbone=backbone, input_size=size, buffer_size=0, channels_last=channels_last)

        x, y = batches[0]
        reference, module = net(), cvm()
        module.start_experience(list(range(N_CLASSES)))
        flops = {
            "linear": training_flops(lambda: F.cross_entropy(reference(x), y)) / len(x),
            "cvm": training_flops(lambda: module.training_loss(x, y, offer=False)) / len(x),
        }
        flop_rows.append({"backbone": backbone, "input": f"{size}x{size}",
                          "training GFLOP / image": f"{flops['linear'] / 1e9:.3f}",
                          "CVM training GFLOP / image": f"{flops['cvm'] / 1e9:.3f}"})

        paths = {
            "plain PyTorch": lambda p, cl: plain_rate(net(cl), batches, args.steps, p)[0],
            "Lightning linear head": lambda p, cl: images_per_second(LinearHeadModule(net(cl)), loader, args.steps, p),
            "CVMModule": lambda p, cl: images_per_second(cvm(cl), loader, args.steps, p),
        }
        rates: dict[tuple[str, str], list[float]] = {}
        compile_seconds: dict[str, float] = {}
        for _ in range(args.rounds):
            for variant, (precision, channels_last) in variants.items():
                for path, measure in paths.items():
                    rates.setdefault((path, variant), []).append(measure(precision, channels_last))
            if args.compile:
                for variant in ("fp32", "bf16-mixed") if native_bf16() else ("fp32",):
                    precision = variants[variant][0]
                    rate, warmup = plain_rate(net(), batches, args.steps, precision, compile_model=True)
                    rates.setdefault(("plain PyTorch, torch.compile", variant), []).append(rate)
                    compile_seconds[variant] = warmup
        base = statistics.median(rates[("CVMModule", "fp32")])
        for (path, variant), values in rates.items():
            rate = statistics.median(values)
            gflops = rate * flops["cvm" if path == "CVMModule" else "linear"] / 1e9
            peak_of_dtype = bf16_peak if variant.startswith("bf16") else fp32_peak
            plain = statistics.median(rates[("plain PyTorch", variant)])
            all_rows.append({
                "backbone": backbone, "path": path, "variant": variant, "img/s": f"{rate:.0f}",
                "GFLOP/s": f"{gflops:.0f}", "of fp32 peak": f"{gflops / fp32_peak:.0%}",
                "of its dtype's peak": f"{gflops / peak_of_dtype:.0%}",
                "x CVM fp32": f"{rate / base:.2f}x", "x plain, same variant": f"{rate / plain:.2f}x",
            })
        for variant, seconds in compile_seconds.items():
            print(f"{backbone}: torch.compile's first 3 steps ({variant}) took {seconds:.1f} s")
    print(table(flop_rows, list(flop_rows[0])))
    print(f"batch {args.batch_size}, {args.steps} timed steps, median of {args.rounds} rounds")
    print(table(all_rows, list(all_rows[0])))
    write_json(args.json, {"peak": peak, "flops": flop_rows, "steps": all_rows, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
