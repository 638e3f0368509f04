"""scinjax.models: a tensor-parallel LLaMA-2-style model on the emulated fabric.

`load` puts real weights (GGUF, Hugging Face folder, or the embedded
SmolLM2-135M) on N emulated ranks; `build_model` does the same for any
canonical weights (e.g. `random_weights`); `model_traffic` counts the bytes
of full-size models by abstract evaluation.
"""

from .api import DTYPES, MODES, LoadedModel, build_model, load
from .config import LlamaConfig, config_names, get_config
from .moe_spec import MoeSpec
from .tp import TPPlan, make_plan
from .traffic import model_traffic
from .weights import abstract_weights, random_weights, validate_weights, weight_shapes

__all__ = [
    "DTYPES",
    "MODES",
    "LlamaConfig",
    "LoadedModel",
    "MoeSpec",
    "TPPlan",
    "abstract_weights",
    "build_model",
    "config_names",
    "get_config",
    "load",
    "load_weights",
    "make_plan",
    "resolve_config",
    "model_traffic",
    "random_weights",
    "validate_weights",
    "weight_shapes",
]


def __getattr__(name):
    # The loaders pull in gguf/tokenizers; import them only when asked for.
    if name in ("load_weights", "resolve_config"):
        from . import loaders

        return getattr(loaders, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
