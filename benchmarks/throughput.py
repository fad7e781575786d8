"""Training throughput: CVMModule vs the same timm backbone with a linear cross-entropy head.

    python benchmarks/throughput.py [--backbones reduced_resnet18 mobilenetv3_small_100] [--steps 30] [--json out.json]

Both train in a Lightning Trainer on the same 32x32 images and batch size;
the two models alternate (A, B, A, B, ...) and each figure is the median of
the rounds, so drifts in machine load hit both alike. CVM runs without
replay here (replay doubles each batch by design; its cost is the third
column, in images/s of new data). Target: CVM >= 0.95x the linear head.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from _lightning import images_per_second
from _report import table, write_json
from torch.utils.data import DataLoader, TensorDataset

from cvm_lightning.concepts import ConceptBank
from cvm_lightning.model import CVMModule
from cvm_lightning.model.backbones import create_backbone, feature_dim

N_CLASSES = 10


class LinearHeadModule(pl.LightningModule):
    """The reference: backbone + linear classifier + cross-entropy, same optimiser as CVM."""

    def __init__(self, backbone: str) -> None:
        super().__init__()
        self.backbone = create_backbone(backbone, img_size=32)
        self.classifier = torch.nn.Linear(feature_dim(self.backbone, 3, 32), N_CLASSES)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.cross_entropy(self.classifier(self.backbone(x)), y)

    def configure_optimizers(self):
        return torch.optim.AdamW(self.parameters(), lr=1e-3, weight_decay=1e-4)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbones", nargs="+", default=["reduced_resnet18", "mobilenetv3_small_100"])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    n = args.batch_size * (args.steps + 3)
    # The stream's current classes are 0-4; the memory holds classes 5-9 (replay skips current classes).
    data = TensorDataset(torch.randn(n, 3, 32, 32), torch.randint(0, N_CLASSES // 2, (n,)))
    loader = DataLoader(data, batch_size=args.batch_size, shuffle=True, drop_last=True)
    bank = ConceptBank.from_names([f"class {i}" for i in range(N_CLASSES)])
    rows = []
    for backbone in args.backbones:
        runs = {"linear": [], "cvm": [], "cvm+replay": []}
        for _ in range(args.rounds):
            runs["linear"].append(images_per_second(LinearHeadModule(backbone), loader, args.steps))
            runs["cvm"].append(
                images_per_second(CVMModule(bank, backbone=backbone, input_size=32, buffer_size=0), loader, args.steps)
            )
            replaying = CVMModule(bank, backbone=backbone, input_size=32, buffer_size=500)
            replaying.seen[N_CLASSES // 2 :] = True  # learned in "earlier experiences"
            replaying.replay.add(
                data.tensors[0][:500], data.tensors[1][:500] + N_CLASSES // 2, torch.zeros(500, bank.dim)
            )
            runs["cvm+replay"].append(images_per_second(replaying, loader, args.steps))
        med = {k: statistics.median(v) for k, v in runs.items()}
        rows.append({
            "backbone": backbone,
            "linear head img/s": f"{med['linear']:.0f}",
            "CVM img/s": f"{med['cvm']:.0f}",
            "CVM / linear": f"{med['cvm'] / med['linear']:.2f}x",
            "CVM + replay img/s (new data)": f"{med['cvm+replay']:.0f}",
        })
    print(f"threads: {torch.get_num_threads()}, batch {args.batch_size}, {args.steps} timed steps, median of "
          f"{args.rounds} rounds")
    print(table(rows, list(rows[0])))
    write_json(args.json, {"rows": rows, "threads": torch.get_num_threads()})


if __name__ == "__main__":
    main()
