"""edgecl: class-incremental learning with pre-trained models, exported to the edge.

Training side (torch + timm) lives here; ``export`` turns a run into an ONNX
bundle and ``runtime`` (numpy + onnxruntime only) serves it on a device.
"""

__version__ = "0.1.0"
