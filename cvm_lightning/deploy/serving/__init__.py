"""``cvm serve``: a deployed model as an HTTP service on LitServe, batched, watched for drift, swapped live.

Needs the ``[serve]`` extra (``pip install cvm_lightning[serve]``). Serving
an ONNX file imports onnxruntime, never torch.
"""

from cvm_lightning._lazy import lazy_exports

__all__ = ["ServeConfig", "check_config", "serve"]
__getattr__, __dir__ = lazy_exports(__name__, {
    "ServeConfig": ".config", "check_config": ".config", "serve": ".server",
})
