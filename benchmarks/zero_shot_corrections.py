"""Zero-shot scoring corrections from scratch: does a per-concept correction from the replay memory help?

    python benchmarks/zero_shot_corrections.py --data-root DIR --seed 0 [--threads 2]

Trains CVM on split-CIFAR-10 (1,000 training and 500 test images a class,
memory 500, bfloat16 autocast, the other defaults of ``cvm run``) and, before
each experience, scores its test images among its own classes and among all
unseen classes with plain cosine similarity and four corrections computed
from the replay memory's embeddings. Prints one JSON row per experience
(accuracies and the share of the most-chosen concept) and the final average
accuracy of each scoring; writes them to ``--out``.
"""
import argparse
import json
from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from cvm_lightning.run_config import RunConfig
from cvm_lightning.runner import prepare, build_cvm_module
from cvm_lightning.training import ExperienceSchedule
from cvm_lightning.hardware import set_threads

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data-root", required=True, help="CIFAR-10 in the ImageFolder layout (train/, test/)")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--threads", type=int, default=2)
parser.add_argument("--out", default="zero_shot_corrections.json", help="a new file; an existing one is not replaced")
args = parser.parse_args()
if Path(args.out).exists():
    parser.error(f"{args.out} exists; pass another --out")
seed, threads = args.seed, args.threads
cfg = RunConfig(benchmark="split-cifar10", data_root=args.data_root, train_per_class=1000, test_per_class=500,
                buffer_size=500, precision="bf16-mixed", seed=seed, strategies=("cvm",))
data, bank = prepare(cfg)
set_threads(threads)
pl.seed_everything(seed, verbose=False)
model = build_cvm_module(cfg, data.benchmark, bank)
classes = [sorted(data.classes_of(j)) for j in range(data.n_experiences)]
tests = [e.dataset.eval() for e in data.benchmark.test_stream]

@torch.no_grad()
def embed_all(ds):
    xs, ys = [], []
    for b in torch.utils.data.DataLoader(ds, batch_size=256):
        xs.append(b[0]); ys.append(b[1])
    x = torch.cat(xs); y = torch.cat(ys)
    return model.encode(x)[1], y

def variants(z, C, mem):
    """Scores of embeddings ``z`` against concepts ``C``: cosine and the corrections from memory embeddings ``mem``."""
    s = z @ C.T
    out = {"raw": s}
    if mem is not None:
        sm = mem @ C.T  # memory x classes
        for k in (10, 50):
            out[f"csls{k}"] = s - sm.topk(min(k, len(mem)), dim=0).values.mean(0)
        out["mean"] = s - sm.mean(0)
        out["std"] = (s - sm.mean(0)) / sm.std(0).clamp_min(1e-6)
        m = mem.mean(0)
        out["center"] = F.normalize(z - m, dim=-1) @ F.normalize(C - m, dim=-1).T
    return out

log = {"rows": []}
def measure(j):
    model.eval()
    mem = model.encode(model.memory_samples()[0])[1] if model.replay.classes else None
    z, y = embed_all(tests[j]); C = model.concepts.float()
    unseen = sorted(c for cs in classes[j:] for c in cs)
    row = {"experience": j}
    for name, s in variants(z.float(), C, mem).items():
        for label, cols in (("own", classes[j]), ("unseen", unseen)):
            cols_t = torch.tensor(cols)
            pred = cols_t[s[:, cols_t].argmax(1)]
            row[f"{name}/{label}"] = float((pred == y).float().mean())
            if label == "unseen":
                row[f"{name}/top_share"] = float(torch.bincount(pred, minlength=10).max()) / len(pred)
    model.train()
    log["rows"].append(row); print(json.dumps(row), flush=True)

class Probe(pl.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch % data.epochs_per_experience == 0 and trainer.current_epoch > 0:
            measure(trainer.current_epoch // data.epochs_per_experience)
    def on_train_end(self, trainer, pl_module):
        model.eval()
        mem = model.encode(model.memory_samples()[0])[1]; C = model.concepts.float()
        final = {}
        for j in range(data.n_experiences):
            z, y = embed_all(tests[j])
            for name, s in variants(z.float(), C, mem).items():
                pred = s.argmax(1)
                final.setdefault(name, []).append(float((pred == y).float().mean()))
        log["final"] = {k: sum(v) / len(v) for k, v in final.items()}
        print("final", json.dumps(log["final"]), flush=True)

trainer = pl.Trainer(callbacks=[ExperienceSchedule(), Probe()], max_epochs=data.max_epochs, logger=False,
                     enable_checkpointing=False, enable_model_summary=False, enable_progress_bar=False,
                     num_sanity_val_steps=0, limit_val_batches=0, accelerator="cpu", precision=cfg.precision)
trainer.fit(model, datamodule=data)
Path(args.out).write_text(json.dumps(log, indent=1))
