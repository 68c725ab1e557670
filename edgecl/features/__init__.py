"""Embedding service: each image embedded once per module state, through the fastest engine with parity.

``FeatureExtractor`` (``edgecl.features.extractor``) is what the experiment hands
to learners and uses for evaluation; ``EmbeddingStore`` (``.store``) the on-disk
cache; ``edgecl.features.engines`` the inference engines (eager torch, fused
TorchScript, onnxruntime).
"""

from .engines import ENGINE_CHOICES, ENGINES, EngineError
from .extractor import FeatureExtractor, default_cache_dir
from .store import EmbeddingStore

__all__ = ["ENGINES", "ENGINE_CHOICES", "EmbeddingStore", "EngineError", "FeatureExtractor", "default_cache_dir"]
