"""Loading models: bundled configs by name, or any HF ``config.json`` by path."""

from __future__ import annotations

import dataclasses
import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hybridkv.errors import InvalidArgumentError, ModelConfigError, ModelConfigWarning
from hybridkv.models.model_spec import ModelSpec
from hybridkv.models.parsers import PARSERS, REFUSED, Parsed, ParseOptions, Parser, decoder
from hybridkv.models.parsers.common import text_config
from hybridkv.models.specs import DTYPE_BYTES

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def supported_model_types() -> tuple[str, ...]:
    """The HF ``model_type`` values a parser exists for."""
    return tuple(sorted(PARSERS))


def list_models() -> tuple[str, ...]:
    """Names of the bundled model configs (usable as ``load_model(name)`` offline)."""
    if not CONFIG_DIR.is_dir():
        return ()
    return tuple(sorted(p.name for p in CONFIG_DIR.iterdir() if (p / "config.json").is_file()))


def model_source(name: str) -> str:
    """The bundled model's source note (its Hugging Face id and how values were taken)."""
    path = CONFIG_DIR / name / "SOURCE"
    return path.read_text(encoding="utf-8").strip() if path.is_file() else ""


def _bundled_name(name: str) -> str | None:
    """The bundled model called ``name``, or whose Hugging Face id is ``name``."""
    key = name.strip().lower()
    bundled = list_models()
    if key in bundled:
        return key
    for candidate in bundled:
        source = model_source(candidate)
        if source and source.splitlines()[0].lower() == key:
            return candidate
    return None


def _check_options(tp: object, kv_dtype: object) -> ParseOptions:
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise InvalidArgumentError(f"tp must be a positive int, got {tp!r}")
    if isinstance(kv_dtype, bool):
        raise InvalidArgumentError(
            f"kv_dtype must be a dtype name or bytes per token, got {kv_dtype!r}"
        )
    if isinstance(kv_dtype, int):
        if kv_dtype <= 0:
            raise InvalidArgumentError(f"kv_dtype bytes per token must be > 0, got {kv_dtype}")
        return ParseOptions(tp=tp, kv_dtype=kv_dtype)
    if isinstance(kv_dtype, str):
        if kv_dtype.lower() not in DTYPE_BYTES:
            known = ", ".join(sorted(DTYPE_BYTES))
            raise InvalidArgumentError(f"unknown kv_dtype {kv_dtype!r}; known: {known}, or an int")
        return ParseOptions(tp=tp, kv_dtype=kv_dtype.lower())
    if kv_dtype is None:
        return ParseOptions(tp=tp)
    raise InvalidArgumentError(
        f"kv_dtype must be a dtype name or bytes per token, got {kv_dtype!r}"
    )


def _int_or_none(value: object) -> int | None:
    """Informative sizes read as-is from a config: kept only when they are ints."""
    return value if isinstance(value, int) else None


def model_from_config(
    config: Mapping[str, Any],
    *,
    name: str = "custom",
    source: str | None = None,
    tp: int = 1,
    kv_dtype: str | int | None = None,
) -> ModelSpec:
    """Turn a parsed HF config into a :class:`ModelSpec` (one spec per cache layer)."""
    opts = _check_options(tp, kv_dtype)
    if not isinstance(config, Mapping):
        raise ModelConfigError(f"a model config must be a JSON object, got {type(config).__name__}")
    model_type = config.get("model_type")
    if not isinstance(model_type, str) or not model_type:
        raise ModelConfigError(
            f"a model config needs a model_type string, got {model_type!r}; supported: "
            f"{', '.join(supported_model_types())}"
        )
    parsed = _parse(config, opts, model_type)
    return ModelSpec(
        name=name,
        layer_specs=parsed.layer_specs,
        layer_names=parsed.layer_names,
        layer_indices=parsed.layer_indices,
        model_type=model_type,
        source=source,
        tp=tp,
        hidden_size=_int_or_none(parsed.hidden_size),
        vocab_size=_int_or_none(parsed.vocab_size),
        num_attention_heads=_int_or_none(parsed.num_attention_heads),
        notes=parsed.notes,
        max_model_len=parsed.max_model_len,
    )


def _run(parser: Parser, config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    try:
        return parser(config, opts, model_type)
    except InvalidArgumentError as exc:
        raise ModelConfigError(f"{model_type}: {exc}") from exc


def _parse(config: Mapping[str, Any], opts: ParseOptions, model_type: str) -> Parsed:
    """Pick the reader: the family's parser; a wrapper's text model; a refusal with its
    reason; or the generic attention-decoder reader with a warning naming what it
    assumed."""
    parser = PARSERS.get(model_type)
    if parser is not None:
        return _run(parser, config, opts, model_type)
    inner = text_config(config)
    inner_type = inner.get("model_type") if inner is not config else None
    if isinstance(inner_type, str) and inner_type in PARSERS:
        # A VL / speech wrapper (qwen3_vl, mistral3, kimi_k25, ...): its text model.
        out = _run(PARSERS[inner_type], inner, opts, inner_type)
        note = (
            f"planned the text model ({inner_type}) of {model_type}; other towers keep no KV cache"
        )
        return dataclasses.replace(out, notes=(note, *out.notes))
    reason = REFUSED.get(model_type) or (
        REFUSED.get(inner_type) if isinstance(inner_type, str) else None
    )
    if reason is not None:
        raise ModelConfigError(f"model_type {model_type!r} is not supported: {reason}")
    try:
        out = _run(decoder.parse_unknown, config, opts, model_type)
    except ModelConfigError as exc:
        raise ModelConfigError(
            f"unsupported model_type {model_type!r}: hybridkv has no parser for it and "
            f"reading it as a plain attention decoder fails: {exc}; model types with a "
            f"parser: {', '.join(supported_model_types())}"
        ) from None
    warnings.warn("; ".join(out.notes), ModelConfigWarning, stacklevel=4)
    return out


def _resolved(config: Any, resolve: str) -> Any:
    if resolve == "transformers" and isinstance(config, Mapping):
        from hybridkv.models.hf import resolve_config

        return resolve_config(config)
    return config


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ModelConfigError(f"cannot read model config {str(path)!r}: {exc.strerror}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelConfigError(f"model config {str(path)!r} is not valid JSON: {exc}") from None


RESOLVERS = ("builtin", "transformers")


def load_model(
    name_or_path: str | Path,
    *,
    tp: int = 1,
    kv_dtype: str | int | None = None,
    resolve: str = "builtin",
) -> ModelSpec:
    """A bundled model by name or Hugging Face id (see :func:`list_models`), or a
    ``config.json`` / its folder.

    ``tp`` divides attention KV heads (replicated when ``tp`` exceeds them) and state
    heads; ``kv_dtype`` is a dtype name for the attention/MLA cache or an int: a custom
    KV dtype of that many bytes per token per layer (per rank). ``resolve="transformers"``
    first rebuilds the config with transformers (installed separately), filling its
    defaults; ``"builtin"`` (default) applies the same defaults without it.
    """
    if resolve not in RESOLVERS:
        raise InvalidArgumentError(f"resolve must be one of {RESOLVERS}, got {resolve!r}")
    bundled = _bundled_name(name_or_path) if isinstance(name_or_path, str) else None
    if bundled is not None:
        name = bundled
        config = _resolved(_read_json(CONFIG_DIR / name / "config.json"), resolve)
        note = model_source(name)
        source = note.splitlines()[0] if note else name
        return model_from_config(config, name=name, source=source, tp=tp, kv_dtype=kv_dtype)
    if not isinstance(name_or_path, (str, Path)):
        raise InvalidArgumentError(f"name_or_path must be a str or Path, got {name_or_path!r}")
    path = Path(name_or_path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise ModelConfigError(
            f"no bundled model or config file {str(name_or_path)!r}; bundled: "
            f"{', '.join(list_models())}"
        )
    config = _resolved(_read_json(path), resolve)
    name = path.parent.name if path.name == "config.json" else path.stem
    return model_from_config(config, name=name, source=str(path), tp=tp, kv_dtype=kv_dtype)
