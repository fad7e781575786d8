"""The settings of ``cvm serve``, each declared once with its default and help; the flags derive from them.

:func:`check_config` is the one validation of a configuration, before
anything is loaded or listens: numbers through
:func:`~cvm_lightning.settings.check_settings`, then the host, the files,
the API key and the port. It imports nothing heavy.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field, fields
from pathlib import Path

from cvm_lightning.errors import ConfigError, DataError
from cvm_lightning.paths import check_input_file, check_input_folder
from cvm_lightning.settings import DEFAULT_Z_THRESHOLD, MODEL_SUFFIXES, RANGES, check_choice, check_settings

API_KEY_VARIABLE = "CVM_API_KEY"
LOOPBACK = "127.0.0.1"
HOSTS = (LOOPBACK, "0.0.0.0", "::")  # the addresses LitServe binds
SERVED_SUFFIXES = (".ckpt", ".onnx", *MODEL_SUFFIXES["torchscript"])


def _setting(default, help: str, metavar: str | None = None):
    return field(default=default, metadata={"help": help, "metavar": metavar})


@dataclass(frozen=True)
class ServeConfig:
    """What ``cvm serve`` runs with. The defaults fit a 2-core PC: one inference worker, batches of up to 16."""

    model: Path = field(metadata={"help": "the .onnx, .pt (TorchScript) or .ckpt file to serve, as `cvm predict "
                                          "--model` takes", "metavar": "FILE"})
    reference: Path | None = _setting(None, "held-out images of the learned classes: the served images' drift is "
                                            "measured against them (GET /drift)", "DIR")
    host: str = _setting(LOOPBACK, f"address to listen on ({', '.join(HOSTS)}); any but {LOOPBACK} needs an API key")
    port: int = _setting(8000, "TCP port")
    workers: int = _setting(1, "inference worker processes (each holds the model)")
    threads: int | None = _setting(None, "threads of each worker's runtime (default: cores / workers, at least 1); "
                                         "idle ones sleep, leaving the HTTP side its share", "N")
    max_batch_size: int = _setting(16, "requests an inference batch gathers at most")
    batch_timeout: float = _setting(0.001, "seconds a batch waits for more requests (under load they queue up "
                                           "anyway: a longer wait only delays a lone request)")
    top_k: int = _setting(3, "classes each answer lists, best first")
    max_request_bytes: int = _setting(10 * 2**20, "largest request body accepted (bigger: 413)")
    max_image_pixels: int = _setting(50_000_000, "largest image (width x height) decoded; bigger is refused as a "
                                                 "decompression bomb")
    drift_window: int = _setting(256, "served images the drift statistic looks at, the latest per class")
    z_threshold: float = _setting(DEFAULT_Z_THRESHOLD, "drift when a class's window is this many standard errors "
                                                       "from the reference")
    watch: bool = _setting(False, "reload --model when the file changes (after `cvm export` writes it), check it "
                                  "and swap it in")
    watch_interval: float = _setting(1.0, "seconds between two looks at the --model file")
    api_key_file: Path | None = _setting(None, f"file holding the API key clients send (X-API-Key or Authorization: "
                                               f"Bearer); default: ${API_KEY_VARIABLE}. Needed off {LOOPBACK} and "
                                               "for POST /model", "FILE")

    def worker_threads(self) -> int:
        """``threads``, or its default for this machine."""
        return self.threads or max(1, (os.cpu_count() or 1) // self.workers)

    def numbers(self) -> dict:
        """The settings that have a rule in :data:`~cvm_lightning.settings.RANGES`."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name in RANGES}


def read_api_key(config: ServeConfig) -> str | None:
    """The API key of ``--api-key-file`` or ``$CVM_API_KEY`` (``None``: none set)."""
    if config.api_key_file is not None:
        path = check_input_file(config.api_key_file, "API key file", fix="It holds the key on one line.")
        key = path.read_text(errors="replace").strip()
        if not key:
            raise ConfigError(f"--api-key-file {path} is empty: write the key into it.")
        return key
    return os.environ.get(API_KEY_VARIABLE, "").strip() or None


def check_port_free(host: str, port: int) -> None:
    """Bind ``host:port`` as uvicorn will, and let go: a port in use is an error before anything starts."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as err:
            raise ConfigError(f"Port {port} on {host} is in use ({err.strerror}): pass another --port, or stop what "
                              "listens there.") from None


def check_config(config: ServeConfig) -> str | None:
    """Validate every setting of ``config``; returns the API key (``None`` where none is set)."""
    check_settings(config.numbers())
    check_choice("host", config.host, HOSTS)
    check_input_file(config.model, "model file", SERVED_SUFFIXES,
                     fix="Pass a .ckpt checkpoint, a TorchScript (.pt) or an .onnx file from `cvm export`.")
    if config.reference is not None:
        check_input_folder(config.reference, "--reference folder", fix="It holds held-out images of the learned "
                                                                       "classes.")
    key = read_api_key(config)
    if config.host != LOOPBACK and key is None:
        raise ConfigError(f"--host {config.host} lets other machines in, so it needs an API key: pass --api-key-file "
                          f"FILE or set ${API_KEY_VARIABLE}.")
    if key is not None and len(key) < 16:
        raise DataError(f"The API key is {len(key)} characters long: use at least 16 (for example the output of "
                        "`python -c 'import secrets; print(secrets.token_urlsafe())'`).")
    check_port_free(config.host, config.port)
    return key
