"""The errors of the training side: every one is an ``EdgeclError``.

The specific ones keep the builtin type callers know (``ValueError`` for bad input,
``RuntimeError`` for a step that cannot run), so ``except ValueError`` still catches them;
the command line catches ``EdgeclError`` (and the runtime's ``EdgeclRuntimeError``) and nothing
broader. Errors of one area live with their code and derive from these: ``BackboneError``
(``edgecl.backbones``), ``DataError`` (``edgecl.data``), ``PeftError`` (``edgecl.peft``),
``EngineError`` (``edgecl.features``), ``ExportError`` (``edgecl.onnx_graph``).
"""


class EdgeclError(Exception):
    """Base class of every training-side error."""


class ConfigError(EdgeclError, ValueError):
    """A hyper-parameter, recipe field or option that is unknown, of the wrong type or out of range."""


class LabelError(EdgeclError, ValueError):
    """Training labels a learner cannot take: an empty task, or classes that skip known ones."""


class StateError(EdgeclError, ValueError):
    """Saved learner state that does not fit the learner (shapes, hyper-parameters, missing parts)."""


class NotTrainedError(EdgeclError, RuntimeError):
    """A learner asked to score before it has learned any class."""
