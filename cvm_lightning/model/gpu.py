"""The CUDA GPU that ``--accelerator gpu`` trains on: whether torch sees one, and whether it has bfloat16 units."""

from __future__ import annotations

import torch

from cvm_lightning.errors import ConfigError


def gpu() -> tuple[str | None, str]:
    """The CUDA GPU torch would train on (``None`` where there is none), and a line that says which or why none."""
    if torch.cuda.is_available():
        name = torch.cuda.get_device_name()
        return name, f"{name} (CUDA {torch.version.cuda})"
    build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "built for the CPU only"
    return None, f"none (torch {torch.__version__}, {build}, sees no CUDA GPU)"


def check_accelerator(accelerator: str, precision: str = "32-true") -> None:
    """``accelerator`` must exist here: ``gpu`` needs a CUDA GPU that this torch can use, with bfloat16 for bf16."""
    if accelerator != "gpu":
        return
    name, line = gpu()
    if name is None:
        raise ConfigError(f"--accelerator gpu needs a CUDA GPU, and there is {line}. Use --accelerator cpu, or "
                          "install a CUDA build of torch on a machine with an NVIDIA GPU.")
    if precision == "bf16-mixed" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16-mixed needs a GPU with bfloat16 units, and {name} has none. "
                          "Use --precision 32-true.")
