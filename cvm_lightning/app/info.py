"""``cvm info``: the versions installed, this CPU's vector features, and the flags that pay off on it.

Like ``python -m torch.utils.collect_env``: paste its output into a bug
report, and read it before choosing ``--precision``, ``--channels-last`` or
``--quantize int8``. The speed-ups it quotes were measured with
``benchmarks/`` on the CPUs that :doc:`the performance page <performance>`
names; they are what to expect, not a measurement of this machine.
"""

from __future__ import annotations

import os
import platform
import re
from importlib import metadata

from cvm_lightning import hardware

PACKAGE = "cvm_lightning"


def dependencies() -> list[tuple[str, str, str]]:
    """``(name, extra, installed version)`` of every requirement of the package (``extra`` is "" for the core)."""
    rows, seen = [], set()
    for requirement in metadata.requires(PACKAGE) or []:
        name = re.split(r"[\s<>=!~;\[]", requirement, maxsplit=1)[0]
        extra = re.search(r"""extra\s*==\s*["']([^"']+)["']""", requirement)
        if name.replace("_", "-").lower() == PACKAGE.replace("_", "-") or name in seen:
            continue  # an extra that names others (dev = cvm_lightning[onnx,pretrained])
        seen.add(name)
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            version = "not installed"
        rows.append((name, extra.group(1) if extra else "", version))
    return rows


def machine() -> dict[str, str]:
    """The CPU, its vector features, cores, the threads torch uses, and the GPU ``--accelerator gpu`` would use."""
    import torch

    from cvm_lightning.model.gpu import gpu

    flags = hardware.cpu_flags()
    features = [label for flag, label in hardware.VECTOR_FEATURES.items() if flag in flags]
    return {
        "cpu": hardware.cpu_name(),
        "architecture": platform.machine(),
        "vector features": ", ".join(features) or "none reported",
        "torch kernels": torch.backends.cpu.get_cpu_capability(),
        "cores (this process may use)": str(hardware.available_cores()),
        "logical CPUs": str(os.cpu_count()),
        "torch intra-op threads": str(torch.get_num_threads()),
        "CUDA GPU": gpu()[1],
    }


def recommendations() -> list[str]:
    """What pays off on this machine, flag by flag."""
    from cvm_lightning.model.gpu import gpu

    lines = []
    if hardware.native_bf16():
        lines.append("--precision bf16-mixed: pays here (bfloat16 units); reduced_resnet18 trained 1.8x faster on a "
                     "Zen 4 with AVX512-BF16, depthwise backbones (MobileNet) gain less or lose")
    else:
        lines.append("--precision 32-true: this CPU has no bfloat16 units, so bf16-mixed would be emulated and "
                     "slower (cvm run refuses it)")
    lines.append("--channels-last: pays most for depthwise backbones (MobileNetV3 trained 1.73x faster on a Zen 4; "
                 "reduced_resnet18 1.28x in float32)")
    if hardware.int8_dot_products():
        lines.append("--quantize int8: onnxruntime runs int8 on this CPU's dot-product instructions (VNNI/AMX)")
    else:
        lines.append("--quantize int8: no VNNI here; exports keep weights to 7 bits, so onnxruntime's 16-bit "
                     "pair sums cannot saturate")
    if gpu()[0] is not None:
        lines.append("--accelerator gpu: trains every strategy on this machine's GPU (CVM through Lightning, the "
                     "baselines through Avalanche's device)")
    cores = hardware.available_cores()
    if cores > 1:
        lines.append(f"--threads N: give each of several runs sharing these {cores} cores its own share "
                     f"(two runs: --threads {max(1, cores // 2)} each)")
    return lines


def report() -> str:
    """The whole ``cvm info`` text."""
    from cvm_lightning import __version__

    installed = dependencies()
    width = max(len(name) for name, _, _ in installed)
    lines = [f"cvm_lightning {__version__}, Python {platform.python_version()} on {platform.platform()}", "",
             "Installed:"]
    for name, extra, version in installed:
        lines.append(f"  {name.ljust(width)}  {version}" + (f"  [{extra}]" if extra else ""))
    lines += ["", "Machine:"]
    facts = machine()
    width = max(map(len, facts))
    lines += [f"  {name.ljust(width)}  {value}" for name, value in facts.items()]
    lines += ["", "On this machine:"] + [f"  {line}" for line in recommendations()]
    return "\n".join(lines)
