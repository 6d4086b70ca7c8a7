"""Real model configs -> per-layer specs, checked against the published config values.

Every expected number is computed here from the bundled config.json (the published
values), independently of the parsers.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from hybridkv.errors import InvalidArgumentError, ModelConfigError
from hybridkv.models import (
    ModelSpec,
    list_models,
    load_model,
    model_from_config,
    model_source,
    supported_model_types,
)
from hybridkv.models.registry import CONFIG_DIR
from hybridkv.planner import plan_memory
from hybridkv.specs import (
    ChunkedLocalSpec,
    CrossAttentionSpec,
    FullAttentionSpec,
    SlidingWindowSpec,
    StateSpec,
)

BS = 16
S = 8
M = 32768
B = 2048
MEM = 80 << 30


def cfg(name: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((CONFIG_DIR / name / "config.json").read_text())
    return raw


def text(name: str) -> dict[str, Any]:
    raw = cfg(name)
    inner: dict[str, Any] = raw.get("text_config", raw)
    return inner


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def plan(model: ModelSpec, **kw: Any) -> Any:
    args = {
        "memory_bytes": MEM,
        "max_num_seqs": S,
        "max_model_len": M,
        "max_num_batched_tokens": B,
        "block_size": BS,
    }
    args.update(kw)
    return plan_memory(model, **args)


def group_of(p: Any, kind: str) -> Any:
    (g,) = [g for g in p.groups if g.kind == kind]
    return g


def test_bundle_is_complete_and_sourced() -> None:
    names = list_models()
    for needed in (
        "qwen3-next-80b-a3b",
        "qwen3.5-4b",
        "qwen3.5-35b-a3b",
        "nemotron-nano-9b-v2",
        "jamba-1.5-mini",
        "falcon-h1-7b",
        "zamba2-2.7b",
        "granite-4.0-h-small",
        "gemma-3-27b-it",
        "gpt-oss-20b",
        "llama-4-scout-17b-16e",
        "whisper-large-v3",
        "llama-3.1-8b",
    ):
        assert needed in names
    for name in names:
        source = model_source(name)
        assert "/" in source.splitlines()[0], name  # a Hugging Face id
        model = load_model(name)
        assert model.name == name and model.source == source.splitlines()[0]
        by_id = load_model(source.splitlines()[0])
        assert by_id.name == name and by_id.layer_specs == model.layer_specs


def test_qwen3_next() -> None:
    c = cfg("qwen3-next-80b-a3b")
    m = load_model("qwen3-next-80b-a3b")
    n, every = c["num_hidden_layers"], c["full_attention_interval"]
    full = [i for i in range(n) if (i + 1) % every == 0]
    assert m.layers_of_kind("full_attention") == tuple(full)
    assert len(m.layers_of_kind("state")) == n - len(full) == 36
    attn = m.layer_specs[full[0]]
    assert attn.page_size_bytes(BS) == BS * 2 * c["num_key_value_heads"] * c["head_dim"] * 2
    conv_dim = (
        2 * c["linear_num_key_heads"] * c["linear_key_head_dim"]
        + c["linear_num_value_heads"] * c["linear_value_head_dim"]
    )
    state_bytes = (c["linear_conv_kernel_dim"] - 1) * conv_dim * 2 + c[
        "linear_num_value_heads"
    ] * c["linear_key_head_dim"] * c["linear_value_head_dim"] * 2
    state = m.layer_specs[0]
    assert isinstance(state, StateSpec) and state.state_bytes == state_bytes
    p = plan(m)
    g = group_of(p, "state")
    assert g.page_size_bytes == 36 * state_bytes
    assert g.num_blocks == S * 2 + 1  # align: running state + last checkpoint
    assert group_of(plan(m, mamba_cache_mode="none"), "state").num_blocks == S + 1
    assert group_of(p, "full_attention").layers == tuple(full)


def test_qwen3_next_tensor_parallel() -> None:
    c = cfg("qwen3-next-80b-a3b")
    m2 = load_model("qwen3-next-80b-a3b", tp=2)
    attn = m2.layer_specs[3]
    assert (
        isinstance(attn, FullAttentionSpec) and attn.num_kv_heads == c["num_key_value_heads"] // 2
    )
    m4 = load_model("qwen3-next-80b-a3b", tp=4)
    attn4 = m4.layer_specs[3]
    assert isinstance(attn4, FullAttentionSpec) and attn4.num_kv_heads == 1  # replicated
    state4 = m4.layer_specs[0]
    assert isinstance(state4, StateSpec)
    assert state4.shapes[1] == (
        c["linear_num_value_heads"] // 4,
        c["linear_key_head_dim"],
        c["linear_value_head_dim"],
    )
    assert m4.tp == 4
    with pytest.raises(ModelConfigError, match="tp=3"):
        load_model("qwen3-next-80b-a3b", tp=3)


@pytest.mark.parametrize("name", ["qwen3.5-4b", "qwen3.5-35b-a3b"])
def test_qwen3_5_dense_and_moe(name: str) -> None:
    c = text(name)
    m = load_model(name)
    kinds = c["layer_types"]
    assert len(m.layers_of_kind("full_attention")) == kinds.count("full_attention")
    assert len(m.layers_of_kind("state")) == kinds.count("linear_attention")
    state = m.layer_specs[kinds.index("linear_attention")]
    assert isinstance(state, StateSpec)
    # the recurrent state is float32 (mamba_ssm_dtype), the conv state bf16
    assert c["mamba_ssm_dtype"] == "float32"
    recurrent = c["linear_num_value_heads"] * c["linear_key_head_dim"] * c["linear_value_head_dim"]
    conv_dim = (
        2 * c["linear_num_key_heads"] * c["linear_key_head_dim"]
        + c["linear_num_value_heads"] * c["linear_value_head_dim"]
    )
    assert state.state_bytes == recurrent * 4 + conv_dim * (c["linear_conv_kernel_dim"] - 1) * 2
    attn = m.layer_specs[kinds.index("full_attention")]
    assert attn.bytes_per_token == 2 * c["num_key_value_heads"] * c["head_dim"] * 2


def test_nemotron_h() -> None:
    c = cfg("nemotron-nano-9b-v2")
    m = load_model("nemotron-nano-9b-v2")
    pattern = c["hybrid_override_pattern"]
    assert len(m.layers_of_kind("state")) == pattern.count("M") == 27
    assert len(m.layers_of_kind("full_attention")) == pattern.count("*") == 4
    assert m.num_layers == 31  # MLP layers hold no cache
    attn_names = [m.layer_names[i] for i in m.layers_of_kind("full_attention")]
    assert attn_names == [f"layers.{i}" for i, ch in enumerate(pattern) if ch == "*"]
    inner = c["mamba_num_heads"] * c["mamba_head_dim"]
    conv = (c["conv_kernel"] - 1) * (inner + 2 * c["n_groups"] * c["ssm_state_size"]) * 2
    # The SSM state is float32: NemotronHConfig.mamba_ssm_cache_dtype defaults to it.
    ssm = c["mamba_num_heads"] * c["mamba_head_dim"] * c["ssm_state_size"] * 4
    state = m.layer_specs[m.layers_of_kind("state")[0]]
    assert state.page_size_bytes(BS) == conv + ssm
    attn = m.layer_specs[m.layers_of_kind("full_attention")[0]]
    assert attn.page_size_bytes(BS) == BS * 2 * c["num_key_value_heads"] * c["head_dim"] * 2
    # tp=16 > 8 groups: groups are replicated, heads divided
    m16 = load_model("nemotron-nano-9b-v2", tp=16)
    st16 = m16.layer_specs[0]
    assert isinstance(st16, StateSpec)
    assert st16.shapes == (
        (c["conv_kernel"] - 1, inner // 16 + 2 * 1 * c["ssm_state_size"]),
        (c["mamba_num_heads"] // 16, c["mamba_head_dim"], c["ssm_state_size"]),
    )


def test_jamba() -> None:
    c = cfg("jamba-1.5-mini")
    m = load_model("jamba-1.5-mini")
    period, offset = c["attn_layer_period"], c["attn_layer_offset"]
    attn = [i for i in range(c["num_hidden_layers"]) if i % period == offset]
    assert m.layers_of_kind("full_attention") == tuple(attn)
    assert len(m.layers_of_kind("state")) == c["num_hidden_layers"] - len(attn) == 28
    inner = c["mamba_expand"] * c["hidden_size"]
    state = m.layer_specs[0]
    assert (
        state.page_size_bytes(BS)
        == inner * (c["mamba_d_conv"] - 1) * 2 + inner * c["mamba_d_state"] * 2
    )
    head = c["hidden_size"] // c["num_attention_heads"]
    assert m.layer_specs[attn[0]].bytes_per_token == 2 * c["num_key_value_heads"] * head * 2


def test_falcon_h1_has_two_caches_per_layer() -> None:
    c = cfg("falcon-h1-7b")
    m = load_model("falcon-h1-7b")
    n = c["num_hidden_layers"]
    assert len(m.layers_of_kind("full_attention")) == len(m.layers_of_kind("state")) == n
    assert m.layer_names[:2] == ("layers.0.self_attn", "layers.0.mamba")
    conv = (c["mamba_d_conv"] - 1) * (
        c["mamba_d_ssm"] + 2 * c["mamba_n_groups"] * c["mamba_d_state"]
    )
    ssm = c["mamba_n_heads"] * c["mamba_d_head"] * c["mamba_d_state"]
    assert m.layer_specs[1].page_size_bytes(BS) == (conv + ssm) * 2
    p = plan(m)
    assert group_of(p, "state").num_layers == n
    assert group_of(p, "full_attention").page_size_bytes == n * BS * 2 * 2 * 128 * 2


def test_zamba2_shared_attention_has_its_own_cache_per_invocation() -> None:
    c = cfg("zamba2-2.7b")
    m = load_model("zamba2-2.7b")
    hybrid = [i for i, t in enumerate(c["layers_block_type"]) if t == "hybrid"]
    assert hybrid == c["hybrid_layer_ids"]
    assert len(m.layers_of_kind("full_attention")) == len(hybrid) == 9
    assert len(m.layers_of_kind("state")) == c["num_hidden_layers"] == 54
    attn = m.layer_specs[m.layers_of_kind("full_attention")[0]]
    assert isinstance(attn, FullAttentionSpec)
    assert attn.head_size == 2 * c["hidden_size"] // c["num_attention_heads"] == 160
    assert attn.num_kv_heads == c["num_key_value_heads"]
    inner = c["mamba_expand"] * c["hidden_size"]
    conv = (c["mamba_d_conv"] - 1) * (inner + 2 * c["mamba_ngroups"] * c["mamba_d_state"])
    ssm = c["n_mamba_heads"] * c["mamba_headdim"] * c["mamba_d_state"]
    assert m.layer_specs[0].page_size_bytes(BS) == (conv + ssm) * 2


def test_granite_4_h() -> None:
    c = cfg("granite-4.0-h-small")
    m = load_model("granite-4.0-h-small")
    assert len(m.layers_of_kind("state")) == c["layer_types"].count("mamba") == 36
    assert len(m.layers_of_kind("full_attention")) == c["layer_types"].count("attention") == 4
    head = c["hidden_size"] // c["num_attention_heads"]
    assert m.layer_specs[m.layers_of_kind("full_attention")[0]].bytes_per_token == (
        2 * c["num_key_value_heads"] * head * 2
    )
    inner = c["mamba_n_heads"] * c["mamba_d_head"]
    assert inner == c["mamba_expand"] * c["hidden_size"]
    conv = (c["mamba_d_conv"] - 1) * (inner + 2 * c["mamba_n_groups"] * c["mamba_d_state"])
    ssm = inner * c["mamba_d_state"]
    assert m.layer_specs[0].page_size_bytes(BS) == (conv + ssm) * 2


def test_gemma3_sliding_and_global() -> None:
    c = text("gemma-3-27b-it")
    m = load_model("gemma-3-27b-it")
    pattern = c["sliding_window_pattern"]
    glob = [i for i in range(c["num_hidden_layers"]) if (i + 1) % pattern == 0]
    assert m.layers_of_kind("full_attention") == tuple(glob)
    assert len(glob) == 10 and len(m.layers_of_kind("sliding_window")) == 52
    sw = m.layer_specs[0]
    assert isinstance(sw, SlidingWindowSpec) and sw.window == c["sliding_window"]
    bpt = 2 * c["num_key_value_heads"] * c["head_dim"] * 2
    p = plan(m, bounded_sizing="per_request")
    g = group_of(p, "sliding_window")
    w = c["sliding_window"]
    assert g.num_blocks == S * (cdiv(min(w - 1 + B, M), BS) + 1) + 1
    assert g.page_size_bytes == 52 * BS * bpt
    # capacity counts only the global layers
    assert p.growing_bytes_per_token == 10 * bpt


def test_gpt_oss() -> None:
    c = cfg("gpt-oss-20b")
    m = load_model("gpt-oss-20b")
    sliding = [i for i, t in enumerate(c["layer_types"]) if t == "sliding_attention"]
    assert m.layers_of_kind("sliding_window") == tuple(sliding)
    assert len(m.layers_of_kind("full_attention")) == c["num_hidden_layers"] - len(sliding)
    sw = m.layer_specs[sliding[0]]
    assert isinstance(sw, SlidingWindowSpec) and sw.window == 128
    assert sw.bytes_per_token == 2 * c["num_key_value_heads"] * c["head_dim"] * 2
    p = plan(m, bounded_sizing="per_request")
    assert group_of(p, "sliding_window").num_blocks == S * (cdiv(128 - 1 + B, BS) + 1) + 1


def test_llama4_chunked_local() -> None:
    c = text("llama-4-scout-17b-16e")
    m = load_model("llama-4-scout-17b-16e")
    nope = [i for i in range(c["num_hidden_layers"]) if (i + 1) % 4 == 0]
    assert m.layers_of_kind("full_attention") == tuple(nope)
    assert len(m.layers_of_kind("chunked_local")) == 36
    cl = m.layer_specs[0]
    assert isinstance(cl, ChunkedLocalSpec) and cl.chunk_size == c["attention_chunk_size"]
    p = plan(m, bounded_sizing="per_request")
    chunk = c["attention_chunk_size"]
    assert group_of(p, "chunked_local").num_blocks == S * cdiv(min(chunk + B, M), BS) + 1
    # an explicit no_rope_layers list wins over the interval
    raw = cfg("llama-4-scout-17b-16e")
    raw["text_config"]["no_rope_layers"] = [0] * 2 + [1] * 46
    m2 = model_from_config(raw)
    assert m2.layers_of_kind("full_attention") == (0, 1)


def test_whisper_encoder_decoder() -> None:
    c = cfg("whisper-large-v3")
    m = load_model("whisper-large-v3")
    assert len(m.layers_of_kind("encoder_only")) == c["encoder_layers"]
    assert len(m.layers_of_kind("full_attention")) == c["decoder_layers"]
    assert len(m.layers_of_kind("cross_attention")) == c["decoder_layers"]
    cross = m.layer_specs[m.layers_of_kind("cross_attention")[0]]
    assert isinstance(cross, CrossAttentionSpec)
    assert cross.max_encoder_len == c["max_source_positions"]
    head = c["d_model"] // c["decoder_attention_heads"]
    assert cross.bytes_per_token == 2 * c["decoder_attention_heads"] * head * 2  # float16
    p = plan(m, max_model_len=c["max_target_positions"])
    assert p.encoder_only_layers == m.layers_of_kind("encoder_only")
    g = group_of(p, "cross_attention")
    assert g.num_blocks == S * cdiv(c["max_source_positions"], BS) + 1
    assert g.max_encoder_len == 1500
    assert all(g.kind != "encoder_only" for g in p.groups)


def test_plain_llama_is_one_group() -> None:
    c = cfg("llama-3.1-8b")
    m = load_model("llama-3.1-8b")
    p = plan(m)
    (g,) = p.groups
    assert g.kind == "full_attention" and g.num_layers == c["num_hidden_layers"]
    head = c["hidden_size"] // c["num_attention_heads"]
    assert g.page_size_bytes == 32 * BS * 2 * c["num_key_value_heads"] * head * 2


def test_deepseek_mla_and_custom_dtype() -> None:
    c = cfg("deepseek-v3")
    m = load_model("deepseek-v3")
    assert len(m.layers_of_kind("mla")) == c["num_hidden_layers"]
    assert m.layer_specs[0].bytes_per_token == (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * 2
    m656 = load_model("deepseek-v3", kv_dtype=656, tp=8)
    assert m656.layer_specs[0].bytes_per_token == 656  # latent replicated across ranks


def test_kv_dtype_changes_attention_not_state() -> None:
    bf = load_model("qwen3-next-80b-a3b")
    f8 = load_model("qwen3-next-80b-a3b", kv_dtype="fp8")
    assert f8.layer_specs[3].bytes_per_token * 2 == bf.layer_specs[3].bytes_per_token
    assert f8.layer_specs[0] == bf.layer_specs[0]
    odd = load_model("gemma-3-27b-it", kv_dtype=131)
    assert {s.bytes_per_token for s in odd.layer_specs} == {131}


def test_unknown_model_type_lists_supported(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"model_type": "bert", "num_hidden_layers": 2}))
    with pytest.raises(ModelConfigError) as err:
        load_model(path)
    message = str(err.value)
    assert "'bert'" in message
    for supported in ("qwen3_next", "nemotron_h", "jamba", "whisper", "gemma3", "llama4"):
        assert supported in message
    assert set(supported_model_types()) >= {"qwen3_5_moe", "falcon_h1", "zamba2", "gpt_oss"}


def test_load_from_path_and_folder(tmp_path: Path) -> None:
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg("gpt-oss-20b")))
    by_dir = load_model(folder)
    by_file = load_model(str(folder / "config.json"))
    assert by_dir.layer_specs == by_file.layer_specs == load_model("gpt-oss-20b").layer_specs
    assert by_dir.name == "my-model"


def test_bad_configs_raise_model_config_error(tmp_path: Path) -> None:
    bad_json = tmp_path / "bad.json"
    bad_json.write_text("{nope")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        load_model(bad_json)
    with pytest.raises(ModelConfigError, match="no bundled model"):
        load_model("no-such-model")
    broken = cfg("nemotron-nano-9b-v2")
    broken["hybrid_override_pattern"] = "M*"
    with pytest.raises(ModelConfigError, match="hybrid_override_pattern"):
        model_from_config(broken)
    missing = cfg("jamba-1.5-mini")
    # A missing mamba_d_state takes JambaConfig's default (16); a wrong one is named.
    missing["mamba_d_state"] = "sixteen"
    with pytest.raises(ModelConfigError, match="mamba_d_state"):
        model_from_config(missing)
    with pytest.raises(ModelConfigError, match="JSON object"):
        model_from_config([1, 2])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="tp"):
        load_model("llama-3.1-8b", tp=0)
    with pytest.raises(InvalidArgumentError, match="kv_dtype"):
        load_model("llama-3.1-8b", kv_dtype="int3")


def test_model_spec_by_hand() -> None:
    full = FullAttentionSpec(num_kv_heads=2, head_size=64)
    m = ModelSpec("tiny", [full, full])
    assert m.layer_specs == (full, full)
    assert m.layer_names == ("layers.0", "layers.1")
    assert m.kind_counts() == {"full_attention": 2}
    with pytest.raises(InvalidArgumentError):
        ModelSpec("empty", [])
    with pytest.raises(InvalidArgumentError):
        ModelSpec("junk", [full, "full"])  # type: ignore[list-item]
    with pytest.raises(InvalidArgumentError):
        ModelSpec("names", [full], layer_names=("a", "b"))


def test_every_bundled_model_plans() -> None:
    for name in list_models():
        m = load_model(name)
        limit = min(M, m.max_model_len or M)
        p = plan(m, max_model_len=limit)
        assert p.token_capacity > 0 and p.total_bytes <= MEM
        covered = sorted([i for g in p.groups for i in g.layers] + list(p.encoder_only_layers))
        assert covered == list(range(m.num_layers))
        assert math.isfinite(p.max_concurrency)


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("gpt-oss-20b", "layer_types"),
        ("granite-4.0-h-small", "layer_types"),
        ("qwen3.5-4b", "layer_types"),
        ("zamba2-2.7b", "layers_block_type"),
    ],
)
def test_unknown_layer_kind_names_the_layer(name: str, key: str) -> None:
    broken = cfg(name)
    inner = broken.get("text_config", broken)
    inner[key] = [*inner[key][:-1], "retention"]
    last = len(inner[key]) - 1
    with pytest.raises(ModelConfigError, match=f"unknown layer type 'retention' at layer {last}"):
        model_from_config(broken)


def test_periodic_layer_kinds_without_layer_types() -> None:
    # Qwen3.5 lists layer_types; without them full_attention_interval decides, the same way.
    listed = cfg("qwen3.5-4b")
    inner = listed.get("text_config", listed)
    interval = inner["full_attention_interval"]
    del inner["layer_types"]
    by_interval = model_from_config(listed)
    assert by_interval.layer_specs == load_model("qwen3.5-4b").layer_specs
    full = by_interval.layers_of_kind("full_attention")
    assert full == tuple(i for i in range(by_interval.num_layers) if (i + 1) % interval == 0)
    # Gemma 3 has no layer_types: every sliding_window_pattern-th layer is global.
    gemma = cfg("gemma-3-27b-it")
    gemma_text = gemma.get("text_config", gemma)
    gemma_text["sliding_window_pattern"] = 2
    globals_ = model_from_config(gemma).layers_of_kind("full_attention")
    assert globals_ == tuple(range(1, gemma_text["num_hidden_layers"], 2))
