"""Configs as transformers writes them: current spellings, its defaults, nested text
models, unknown model types, and (when transformers is installed) every config class
in its ``CONFIG_MAPPING``.

Expected layer kinds are written out here from transformers' documented defaults (each
test names the field), not taken from the parsers.
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any

import pytest
from hybridkv.errors import HybridKVError, ModelConfigError, ModelConfigWarning
from hybridkv.models import load_model, model_from_config
from hybridkv.models.registry import CONFIG_DIR
from hybridkv.planner import plan_memory
from hybridkv.specs import SlidingWindowSpec, StateSpec


def cfg(name: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((CONFIG_DIR / name / "config.json").read_text())
    return raw


def kinds(model: Any) -> list[str]:
    return [s.kind for s in model.layer_specs]


def small_plan(model: Any) -> Any:
    return plan_memory(
        model,
        memory_bytes=40 << 30,
        max_num_seqs=64,
        max_model_len=32768,
        max_num_batched_tokens=8192,
    )


# -- transformers >= 5 spellings ---------------------------------------------------


def test_nemotron_h_layers_block_type_with_null_layer_count() -> None:
    legacy = cfg("nemotron-nano-9b-v2")
    current = copy.deepcopy(legacy)
    pattern = current.pop("hybrid_override_pattern")
    names = {"M": "linear_attention", "*": "full_attention", "-": "mlp", "E": "moe"}
    current["layers_block_type"] = [names[c] for c in pattern]
    current["num_hidden_layers"] = None
    a, b = model_from_config(legacy), model_from_config(current)
    assert a.layer_specs == b.layer_specs and a.layer_names == b.layer_names
    assert b.layer_indices == tuple(i for i, c in enumerate(pattern) if c in "M*")
    # the alias transformers also accepts
    current["layer_types"] = current.pop("layers_block_type")
    assert model_from_config(current).layer_specs == a.layer_specs


def test_nemotron_h_count_mismatch_names_the_fields() -> None:
    current = cfg("nemotron-nano-9b-v2")
    current["layers_block_type"] = ["linear_attention", "full_attention"]
    del current["hybrid_override_pattern"]
    with pytest.raises(ModelConfigError, match="layers_block_type lists 2 layers but num_hidden"):
        model_from_config(current)


def test_nemotron_h_ssm_state_defaults_to_float32() -> None:
    c = cfg("nemotron-nano-9b-v2")
    c.pop("mamba_ssm_cache_dtype", None)
    state = next(s for s in model_from_config(c).layer_specs if isinstance(s, StateSpec))
    # NemotronHConfig.mamba_ssm_cache_dtype = "float32"; the conv state keeps the model dtype.
    assert state.dtypes == ("bfloat16", "float32")
    c["mamba_ssm_cache_dtype"] = "bfloat16"
    state = next(s for s in model_from_config(c).layer_specs if isinstance(s, StateSpec))
    assert state.dtypes == ("bfloat16", "bfloat16")


def test_granite_and_zamba2_current_spellings() -> None:
    for name, key in (("granite-4.0-h-small", "layer_types"), ("zamba2-2.7b", "layers_block_type")):
        legacy = cfg(name)
        current = copy.deepcopy(legacy)
        rename = {"mamba": "linear_attention", "attention": "full_attention"}
        current[key] = [rename.get(k, k) for k in current[key]]
        assert current[key] != legacy[key]
        assert model_from_config(current).layer_specs == model_from_config(legacy).layer_specs


def test_granite_without_layer_types_is_all_mamba() -> None:
    c = cfg("granite-4.0-h-small")
    del c["layer_types"]
    # GraniteMoeHybridConfig.__post_init__: layer_types = ["linear_attention"] * n.
    assert set(kinds(model_from_config(c))) == {"state"}


# -- transformers' defaults for missing keys -----------------------------------------


def test_gpt_oss_without_layer_types_alternates() -> None:
    c = cfg("gpt-oss-20b")
    listed = model_from_config(c)
    del c["layer_types"]
    m = model_from_config(c)
    # GptOssConfig: "sliding_attention" if (i + 1) % 2 else "full_attention".
    expect = [
        "sliding_window" if (i + 1) % 2 else "full_attention" for i in range(c["num_hidden_layers"])
    ]
    assert kinds(m) == expect
    assert m.layer_specs == listed.layer_specs


@pytest.mark.parametrize("model_type", ["qwen2", "qwen3"])
def test_qwen_use_sliding_window(model_type: str) -> None:
    base = {
        "model_type": model_type,
        "num_hidden_layers": 36,
        "num_attention_heads": 16,
        "num_key_value_heads": 8,
        "hidden_size": 2048,
        "head_dim": 128,
        "vocab_size": 1000,
        "sliding_window": 4096,
        "max_window_layers": 28,
    }
    assert set(kinds(model_from_config(base))) == {"full_attention"}  # use_sliding_window: False
    m = model_from_config({**base, "use_sliding_window": True})
    # Qwen2Config: sliding from layer max_window_layers on.
    assert kinds(m) == ["full_attention"] * 28 + ["sliding_window"] * 8
    assert isinstance(m.layer_specs[30], SlidingWindowSpec) and m.layer_specs[30].window == 4096
    # without sliding_window the dataclass default (4096) applies
    no_key = {k: v for k, v in base.items() if k != "sliding_window"}
    m = model_from_config({**no_key, "use_sliding_window": True})
    assert m.layer_specs[35] == SlidingWindowSpec(
        num_kv_heads=8, head_size=128, dtype="bfloat16", window=4096
    )


def test_jamba_attention_offset_defaults_to_four() -> None:
    c = cfg("jamba-1.5-mini")
    c.pop("attn_layer_offset")
    period = c["attn_layer_period"]
    m = model_from_config(c)
    # JambaConfig.attn_layer_offset = 4.
    assert m.layers_of_kind("full_attention") == tuple(
        i for i in range(c["num_hidden_layers"]) if i % period == 4
    )


def test_mistral_sliding_window_default() -> None:
    base = {
        "model_type": "mistral",
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "hidden_size": 1024,
        "vocab_size": 100,
    }
    # MistralConfig.sliding_window = 4096 when absent; null turns it off.
    assert {s.window for s in model_from_config(base).layer_specs} == {4096}  # type: ignore[union-attr]
    assert set(kinds(model_from_config({**base, "sliding_window": None}))) == {"full_attention"}
    # Mixtral's default is None
    assert set(kinds(model_from_config({**base, "model_type": "mixtral"}))) == {"full_attention"}


# -- plan JSON: the model's layer numbers and names ----------------------------------


def test_plan_json_uses_model_layer_numbers_and_names() -> None:
    c = cfg("nemotron-nano-9b-v2")
    pattern = c["hybrid_override_pattern"]
    out = small_plan(load_model("nemotron-nano-9b-v2")).to_dict()
    attn = next(g for g in out["groups"] if g["kind"] == "full_attention")
    assert attn["layers"] == [i for i, ch in enumerate(pattern) if ch == "*"]
    assert attn["layer_names"] == [f"layers.{i}" for i in attn["layers"]]
    state = next(g for g in out["groups"] if g["kind"] == "state")
    assert state["layers"] == [i for i, ch in enumerate(pattern) if ch == "M"]
    # cache positions stay available
    assert sorted(attn["cache_layers"] + state["cache_layers"]) == list(range(31))


def test_plan_table_shows_layers_compactly(capsys: pytest.CaptureFixture[str]) -> None:
    from hybridkv.cli import main

    args = ["plan", "--model", "gemma-2-9b", "--memory", "40GiB", "--max-model-len", "8192"]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "21: 0-40/2" in table and "21: 1-41/2" in table  # Gemma2: even layers slide
    bart = ["plan", "--model", "bart-large", "--memory", "40GiB", "--max-model-len", "1024"]
    assert main(bart) == 0
    table = capsys.readouterr().out
    assert table.count("12: 0-11") == 2 and "decoder.layers.N.encoder_attn" in table
    assert main([*args, "--json"]) == 0
    groups = json.loads(capsys.readouterr().out)["groups"]
    assert [g["layers"] for g in groups] == [list(range(0, 42, 2)), list(range(1, 42, 2))]


# -- wrappers, unknown types, refusals ------------------------------------------------


def test_text_config_wrapper_plans_the_text_model() -> None:
    inner = cfg("llama-3.1-8b")
    wrapped = {"model_type": "some_vlm", "text_config": inner, "vision_config": {"depth": 24}}
    m = model_from_config(wrapped)
    assert m.layer_specs == model_from_config(inner).layer_specs
    assert any("text model (llama)" in n for n in m.notes)


@pytest.mark.parametrize(
    ("wrapper", "inner_name", "inner_type"),
    [
        # Qwen3VLConfig.text_config (qwen3_vl_text), Mistral3Config.text_config (a Mistral
        # decoder), Kimi-K2.5's remote-code wrapper around its DeepSeek-V3 text model.
        ("qwen3_vl", "qwen3-8b", "qwen3_vl_text"),
        ("mistral3", "ministral-8b", "mistral"),
        ("kimi_k25", "deepseek-v3", "deepseek_v3"),
    ],
)
def test_named_vl_wrappers_plan_their_text_model(
    wrapper: str, inner_name: str, inner_type: str
) -> None:
    inner = {**cfg(inner_name), "model_type": inner_type}
    wrapped = {"model_type": wrapper, "text_config": inner, "vision_config": {"depth": 24}}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ModelConfigWarning)
        m = model_from_config(wrapped)
        alone = model_from_config(inner)
    assert m.layer_specs == alone.layer_specs and m.layer_names == alone.layer_names
    assert any(f"text model ({inner_type})" in n for n in m.notes), m.notes
    assert small_plan(m).token_capacity == small_plan(alone).token_capacity


def test_unknown_decoder_plans_with_a_warning() -> None:
    c = cfg("llama-3.1-8b")
    c["model_type"] = "brand_new_llm"
    with pytest.warns(ModelConfigWarning, match="brand_new_llm.*every layer full attention"):
        m = model_from_config(c)
    assert m.layer_specs == load_model("llama-3.1-8b").layer_specs
    del c["num_key_value_heads"]
    with pytest.warns(ModelConfigWarning, match="one KV head per attention head"):
        model_from_config(c)


def test_unknown_gated_delta_net_hybrid_plans_with_a_warning() -> None:
    c: dict[str, Any] = {
        "model_type": "brand_new_gdn",
        "vocab_size": 1000,
        "hidden_size": 1024,
        "num_hidden_layers": 6,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "head_dim": 128,
        "sliding_window": 512,
        "layer_types": ["linear_attention", "sliding_attention", "full_attention"] * 2,
        "linear_num_key_heads": 8,
        "linear_num_value_heads": 16,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
        "torch_dtype": "bfloat16",
    }
    with pytest.warns(ModelConfigWarning, match="brand_new_gdn.*gated delta nets") as rec:
        m = model_from_config(c)
    assert not any("text model" in str(w.message) for w in rec)  # not a wrapper
    assert kinds(m) == ["state", "sliding_window", "full_attention"] * 2
    # conv over q, k, v (2 * 8 * 128 + 16 * 128 channels) x 3, + 16 x 128 x 128 state, bf16
    assert m.layer_specs[0].page_size_bytes(16) == (2 * 8 * 128 + 16 * 128) * 3 * 2 + (
        16 * 128 * 128 * 2
    )
    assert m.layer_specs[1].bytes_per_token == 2 * 4 * 128 * 2
    del c["linear_key_head_dim"]
    with pytest.raises(ModelConfigError, match=r"linear_attention.*linear_key_head_dim"):
        model_from_config(c)


def test_unreadable_unknown_type_is_refused_with_what_is_missing() -> None:
    with pytest.raises(ModelConfigError, match="num_attention_heads"):
        model_from_config({"model_type": "mystery", "num_hidden_layers": 4, "vocab_size": 10})
    with pytest.raises(ModelConfigError, match=r"xlstm.*matrix-memory"):
        model_from_config({"model_type": "xlstm", "num_hidden_layers": 4})
    with pytest.raises(ModelConfigError, match="rwkv config needs a positive int 'hidden_size'"):
        model_from_config({"model_type": "rwkv", "num_hidden_layers": 4})
    with pytest.raises(ModelConfigError, match="model_type"):
        model_from_config({"num_hidden_layers": 4})


@pytest.mark.parametrize(
    ("model_type", "keys", "bound"),
    [
        # XGLMConfig.attribute_map; sinusoidal positions: unbounded.
        ("xglm", {"num_layers": 24, "attention_heads": 16, "d_model": 1024}, None),
        # XLMConfig.attribute_map; learned positions unless sinusoidal_embeddings.
        ("xlm", {"n_layers": 12, "n_heads": 16, "emb_dim": 2048}, 512),
        # TrOCRConfig.attribute_map; use_learned_position_embeddings defaults to True.
        ("trocr", {"decoder_layers": 12, "decoder_attention_heads": 16, "d_model": 1024}, 512),
    ],
)
def test_older_key_spellings_plan_through_the_generic_reader(
    model_type: str, keys: dict[str, int], bound: int | None
) -> None:
    c: dict[str, Any] = {"model_type": model_type, "vocab_size": 1000, **keys}
    if bound is not None:
        c["max_position_embeddings"] = bound
    with pytest.warns(ModelConfigWarning, match="read .* as num_hidden_layers"):
        m = model_from_config(c)
    layers, heads, hidden = keys.values()
    assert kinds(m) == ["full_attention"] * layers
    # one KV head per attention head, head_dim = hidden / heads, bf16, K and V
    assert {s.bytes_per_token for s in m.layer_specs} == {2 * heads * (hidden // heads) * 2}
    assert m.max_model_len == bound
    if model_type == "xlm":
        with pytest.warns(ModelConfigWarning):
            assert model_from_config({**c, "sinusoidal_embeddings": True}).max_model_len is None
    if model_type == "trocr":
        with pytest.warns(ModelConfigWarning):
            unbounded = model_from_config({**c, "use_learned_position_embeddings": False})
        assert unbounded.max_model_len is None


def test_kosmos2_text_config_spellings() -> None:
    text = {"model_type": "kosmos_2_text_model", "layers": 24, "attention_heads": 32}
    c = {"model_type": "kosmos-2", "text_config": {**text, "embed_dim": 2048, "vocab_size": 9}}
    with pytest.warns(ModelConfigWarning, match="text model \\(kosmos_2_text_model\\)"):
        m = model_from_config(c)
    assert kinds(m) == ["full_attention"] * 24
    assert m.layer_specs[0].bytes_per_token == 2 * 32 * 64 * 2


@pytest.mark.parametrize(
    ("kind", "why"),
    [
        ("hybrid", "linear-attention state and a full-attention KV"),
        ("hybrid_sliding", "linear-attention state and a sliding-window KV"),
        ("heavily_compressed_attention", "compressed-KV spec"),
        ("compressed_sparse_attention", "compressed-KV spec"),
        ("reference_sliding_attention", "bounded by the prompt"),
    ],
)
def test_cache_kinds_without_a_spec_are_refused_saying_why(kind: str, why: str) -> None:
    c = cfg("llama-3.1-8b")
    c["model_type"] = "brand_new_llm"
    c["layer_types"] = ["full_attention", kind] * (c["num_hidden_layers"] // 2)
    with pytest.raises(ModelConfigError, match=f"layer 1 is '{kind}': .*{why}"):
        model_from_config(c)


def test_encoder_decoder_refusals_say_what_is_missing() -> None:
    composite = {"model_type": "vision-encoder-decoder", "encoder": {}, "decoder": {}}
    with pytest.raises(ModelConfigError, match="composite of an encoder config and a decoder"):
        model_from_config(composite)
    seq2seq = {**cfg("llama-3.1-8b"), "model_type": "new_seq2seq", "is_encoder_decoder": True}
    with pytest.raises(ModelConfigError, match="cross attention is bounded by the encoder"):
        model_from_config(seq2seq)


# -- transformers itself (installed by `make test`) ------------------------------------


def test_bundled_configs_resolved_by_transformers_give_the_same_model() -> None:
    # transformers is a dev requirement (requirements-dev.txt): `make test` installs it,
    # so these tests fail rather than skip when it is missing.
    from hybridkv.models import list_models

    for name in list_models():
        assert (
            load_model(name, resolve="transformers").layer_specs == load_model(name).layer_specs
        ), name


def test_builtin_defaults_are_transformers_defaults_for_every_parser() -> None:
    """A config that spells only what differs from transformers' defaults (what
    ``to_diff_dict`` keeps: here, nothing but ``model_type``) plans exactly like the
    config transformers fills in: every default the built-in reader falls back to is
    the family's transformers default."""
    from hybridkv.models import supported_model_types
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    checked = []
    for model_type in supported_model_types():
        if model_type not in CONFIG_MAPPING:  # remote-code spellings (kimi_k2, minimax_m1, ...)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = CONFIG_MAPPING[model_type]()
            full = json.loads(config.to_json_string())
            sparse = json.loads(config.to_json_string(use_diff=True))
        sparse["model_type"] = model_type
        filled = model_from_config(full)
        assert model_from_config(sparse).layer_specs == filled.layer_specs, model_type
        checked.append(model_type)
    assert len(checked) >= 100, checked


def test_every_transformers_config_plans_or_is_refused_clearly(
    capsys: pytest.CaptureFixture[str],
) -> None:
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, CONFIG_MAPPING_NAMES
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES,
        MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES,
    )

    decoders = (
        set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
        | set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)
        | set(MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING_NAMES)
    )
    planned: list[str] = []
    refused: dict[str, str] = {}
    unbuildable: list[str] = []
    for model_type in CONFIG_MAPPING_NAMES:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                config = json.loads(CONFIG_MAPPING[model_type]().to_json_string())
        except Exception:  # transformers' own default cannot be built: nothing to plan
            unbuildable.append(model_type)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ModelConfigWarning)
            try:
                model = model_from_config(config, name=model_type)
            except HybridKVError as exc:
                refused[model_type] = str(exc)
                continue
        # default configs are of every size: plan with room for the largest
        plan_memory(
            model,
            memory_bytes=1 << 42,
            max_num_seqs=4,
            max_model_len=min(4096, model.max_model_len or 4096),  # learned positions bound
            max_num_batched_tokens=2048,
        )
        planned.append(model_type)
    refused_decoders = sorted(t for t in refused if t in decoders)
    with capsys.disabled():  # shown in `make test`'s output, not captured
        print(
            f"\ntransformers {transformers.__version__}: {len(planned)} planned, "
            f"{len(refused)} refused ({len(refused_decoders)} decoders), "
            f"{len(unbuildable)} without a buildable default"
        )
        for t in refused_decoders:
            print(f"  refused decoder {t}: {refused[t][:200]}")
    for t, message in refused.items():
        assert (message and t in message) or "model_type" in message, (t, message)
    assert len(planned) > 300
    assert len(refused_decoders) <= 31, refused_decoders


# -- caches read from transformers' own code (no vLLM spec to follow) -----------------


def test_rwkv_keeps_five_vectors_per_layer() -> None:
    c = {"model_type": "rwkv", "num_hidden_layers": 24, "hidden_size": 2048, "vocab_size": 9}
    m = model_from_config(c)
    # RwkvModel.forward: state[0..1] (token shifts) in the model dtype, state[2..4]
    # (WKV numerator, denominator, max) in float32, each hidden_size wide per layer.
    assert kinds(m) == ["state"] * 24
    assert {s.page_size_bytes(16) for s in m.layer_specs} == {2048 * (2 * 2 + 3 * 4)}
    assert m.layer_names[3] == "blocks.3" and m.layer_indices == tuple(range(24))
    fp32 = model_from_config({**c, "torch_dtype": "float32"})
    assert fp32.layer_specs[0].page_size_bytes(16) == 2048 * 5 * 4
    plan = small_plan(m)
    assert plan.token_capacity == 64 * 32768  # nothing grows: every request fits
    with pytest.raises(ModelConfigError, match=r"rwkv6.*matrix-valued"):
        model_from_config({**c, "model_type": "rwkv6", "num_attention_heads": 32})


def test_zaya_layers_hold_a_cca_state_and_attention() -> None:
    c: dict[str, Any] = {
        "model_type": "zaya",
        "vocab_size": 100,
        "hidden_size": 2048,
        "num_hidden_layers": 4,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "torch_dtype": "bfloat16",
    }  # ZayaConfig defaults: head_dim 128, cca_time0 = cca_time1 = 2, every layer "hybrid"
    m = model_from_config(c)
    assert kinds(m) == ["state", "full_attention"] * 4
    assert m.layer_names[:2] == ("layers.0.cca", "layers.0.self_attn")
    assert m.layer_indices == (0, 0, 1, 1, 2, 2, 3, 3)
    # conv window: (8 + 2) heads x 128 channels x ((2 - 1) + (2 - 1)) positions; the
    # delayed value: 2 x 128 / 2; both bf16. Attention: 2 KV heads of 128, K and V.
    assert m.layer_specs[0].page_size_bytes(16) == (10 * 128 * 2 + 2 * 128 // 2) * 2
    assert m.layer_specs[1].bytes_per_token == 2 * 2 * 128 * 2
    c["layer_types"] = ["hybrid", "hybrid_sliding"] * 2
    assert kinds(model_from_config(c)) == ["state", "full_attention"] * 4  # window None
    c["sliding_window"] = 1024
    m = model_from_config(c)
    assert kinds(m) == ["state", "full_attention", "state", "sliding_window"] * 2
    c["layer_types"] = ["hybrid", "mamba", "hybrid", "hybrid"]
    with pytest.raises(ModelConfigError, match="unknown layer type 'linear_attention' at layer 1"):
        model_from_config(c)


def test_qsa_indexed_attention_keeps_an_indexer_key_per_token() -> None:
    text: dict[str, Any] = {
        "model_type": "qwen4_exp_text",
        "vocab_size": 100,
        "hidden_size": 2048,
        "num_hidden_layers": 8,
        "num_attention_heads": 16,
        "num_key_value_heads": 2,
        "head_dim": 256,
        "layer_types": ["linear_attention"] * 3 + ["full_attention"],
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_conv_kernel_dim": 4,
        "torch_dtype": "bfloat16",
    }
    text["layer_types"] = (["linear_attention"] * 3 + ["qwen_sparse_attention"]) * 2
    wrapped = {"model_type": "qwen4_exp", "text_config": text}
    with pytest.raises(ModelConfigError, match="indexer_head_dim"):
        model_from_config(wrapped)
    text |= {"indexer_n_heads": 16, "indexer_kv_heads": 1, "indexer_head_dim": 128}
    with pytest.warns(ModelConfigWarning, match="QSA indexer key"):
        m = model_from_config(wrapped)
    assert kinds(m) == (["state"] * 3 + ["full_attention"]) * 2
    # K and V (2 heads of 256, bf16) plus one 128-element bf16 indexer key per token
    assert m.layer_specs[3].bytes_per_token == 2 * 2 * 256 * 2 + 128 * 2
    assert m.layer_indices[3] == 3


def test_refusals_of_caches_without_a_spec_say_why() -> None:
    c = cfg("gemma-3n-e4b-it")
    c["text_config"]["num_kv_shared_layers"] = c["text_config"]["num_hidden_layers"]
    with pytest.raises(ModelConfigError, match="keeps no cache of its own; plan the target"):
        model_from_config(c)
    with pytest.raises(ModelConfigError, match=r"kolibri1_1.*kv_source_layers"):
        model_from_config({"model_type": "kolibri1_1", "num_hidden_layers": 4})
