"""Import timm on a CPU-only torch.

The torchvision wheels on PyPI are CUDA builds. Next to a CPU torch their C
extension cannot load (it links ``libtorch_cuda.so``), which torchvision
handles everywhere except two unguarded ``register_fake("torchvision::nms")``
/ ``("torchvision::qnms")`` calls in ``torchvision/_meta_registrations.py``:
``import torchvision`` then raises ``RuntimeError: operator torchvision::nms
does not exist`` and timm, which imports ``torchvision.ops``, fails with it.

Only in that case we declare the two operator schemas (no kernels: edgecl never
calls NMS) and import again. With a working torchvision nothing is touched.
"""

from __future__ import annotations

import sys

_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


def _ensure_torchvision() -> None:
    try:
        import torchvision  # noqa: F401

        return
    except ModuleNotFoundError:
        return  # timm reports the missing dependency itself
    except RuntimeError as exc:
        if "torchvision::" not in str(exc):
            raise
    import torch

    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    for op in ("nms", "qnms"):
        try:
            torch.library.define(f"torchvision::{op}", _SCHEMA)
        except RuntimeError:
            pass  # already declared
    import torchvision  # noqa: F401


def import_timm():
    """Return the ``timm`` module, working around a CUDA-only torchvision (edgecl's own architectures
    are registered by ``edgecl.backbones.timm_models``)."""
    _ensure_torchvision()
    import timm

    return timm
