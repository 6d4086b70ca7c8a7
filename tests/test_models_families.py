"""Every bundled model, layer by layer, and its capacity from an independent computation.

``expected_layers`` reads each bundled ``config.json`` with formulas written here from
the models' papers / reference implementations (cache bytes per token, state tensor
sizes, which layer is which) — not with the parsers. ``test_capacity_matches_...``
then sizes the pools with its own arithmetic and compares the planner's token
capacity, within the null blocks.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from hybridkv.errors import ModelConfigError
from hybridkv.manager import KVCacheManager
from hybridkv.models import list_models, load_model, model_source
from hybridkv.models.registry import CONFIG_DIR
from hybridkv.planner import plan_memory
from hybridkv.specs import SparseMLASpec

DT = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class Layer:
    """One cache layer as this test sees it.

    ``kind``: grow (full attention / MLA), window, chunk, cross, state. ``bpt``: bytes
    per token (attention kinds); ``state``: bytes of one request's state; ``span``:
    window / chunk / encoder length.
    """

    kind: str
    bpt: int = 0
    state: int = 0
    span: int = 0


def cfg(name: str) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads((CONFIG_DIR / name / "config.json").read_text())
    return raw


def dtype_of(c: dict[str, Any], outer: dict[str, Any] | None = None) -> int:
    for src in (c, outer or {}):
        for key in ("torch_dtype", "dtype"):
            if src.get(key) in DT:
                return DT[src[key]]
    return 2


def kv(heads: int, dim: int, b: int) -> int:
    return 2 * heads * dim * b


def mamba2_bytes(
    heads: int, dim: int, groups: int, d_state: int, conv: int, inner: int, b: int, ssm_b: int
) -> int:
    return (conv - 1) * (inner + 2 * groups * d_state) * b + heads * dim * d_state * ssm_b


def gdn_layer(c: dict[str, Any], b: int, ssm_b: int) -> Layer:
    """A gated-delta-net layer's state: conv windows of q, k, v at ``b`` bytes, and the
    recurrent state at ``ssm_b``."""
    kh, vh, kd, vd = (
        c["linear_num_key_heads"],
        c["linear_num_value_heads"],
        c["linear_key_head_dim"],
        c["linear_value_head_dim"],
    )
    conv = (2 * kh * kd + vh * vd) * (c["linear_conv_kernel_dim"] - 1) * b
    return Layer("state", state=conv + vh * kd * vd * ssm_b)


def expected_layers(name: str) -> list[Layer]:
    c = cfg(name)
    mt = c["model_type"]
    t = c.get("text_config", c)
    b = dtype_of(t, c)
    if mt in ("deepseek_v3",):
        return [Layer("grow", (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * b)] * c[
            "num_hidden_layers"
        ]
    if mt in ("deepseek_v32", "glm_moe_dsa"):
        # latent + one indexer key of index_head_dim per token, both bf16
        per = (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * b + c["index_head_dim"] * b
        return [Layer("grow", per)] * c["num_hidden_layers"]
    if mt == "falcon_h1":
        attn = Layer("grow", kv(c["num_key_value_heads"], c["head_dim"], b))
        st = Layer(
            "state",
            state=mamba2_bytes(
                c["mamba_n_heads"],
                c["mamba_d_head"],
                c["mamba_n_groups"],
                c["mamba_d_state"],
                c["mamba_d_conv"],
                c["mamba_d_ssm"],
                b,
                b,
            ),
        )
        return [attn, st] * c["num_hidden_layers"]
    if mt in ("gemma3", "gemma2", "cohere2", "olmo3", "exaone4", "gpt_oss", "gemma3n"):
        n = t["num_hidden_layers"]
        hd = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
        per = kv(t["num_key_value_heads"], hd, b)
        every = {
            "gemma3": t.get("sliding_window_pattern", 6),
            "gemma2": 2,
            "cohere2": 4,
            "olmo3": 4,
            "exaone4": 4,
            "gpt_oss": 2,
            "gemma3n": 5,
        }[mt]
        out = [
            Layer("grow", per)
            if (i + 1) % every == 0
            else Layer("window", per, span=t["sliding_window"])
            for i in range(n)
        ]
        if "layer_types" in t:  # the published list must agree with the period
            assert [x.kind for x in out] == [
                "grow" if k == "full_attention" else "window" for k in t["layer_types"]
            ]
        if mt == "gemma3n":
            out = out[: n - t["num_kv_shared_layers"]]  # shared layers hold no cache
        return out
    if mt in ("granitemoehybrid", "bamba"):
        n = c["num_hidden_layers"]
        if mt == "bamba":
            kinds = ["attention" if i in c["attn_layer_indices"] else "mamba" for i in range(n)]
        else:
            kinds = c["layer_types"]
        attn = Layer(
            "grow", kv(c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"], b)
        )
        st = Layer(
            "state",
            state=mamba2_bytes(
                c["mamba_n_heads"],
                c["mamba_d_head"],
                c["mamba_n_groups"],
                c["mamba_d_state"],
                c["mamba_d_conv"],
                c["mamba_n_heads"] * c["mamba_d_head"],
                b,
                b,
            ),
        )
        return [attn if k == "attention" else st for k in kinds]
    if mt == "jamba":
        inner = c["mamba_expand"] * c["hidden_size"]
        st = Layer(
            "state", state=inner * (c["mamba_d_conv"] - 1) * b + inner * c["mamba_d_state"] * b
        )
        attn = Layer(
            "grow", kv(c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"], b)
        )
        return [
            attn if i % c["attn_layer_period"] == c["attn_layer_offset"] else st
            for i in range(c["num_hidden_layers"])
        ]
    if mt in (
        "llama",
        "qwen2",
        "qwen3",
        "qwen3_moe",
        "glm4_moe",
        "minimax_m2",
        "hunyuan_v1_moe",
        "seed_oss",
        "smollm3",
        "mixtral",
    ):
        hd = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
        return [Layer("grow", kv(t["num_key_value_heads"], hd, b))] * t["num_hidden_layers"]
    if mt in ("ministral", "phi3"):
        hd = t.get("head_dim") or t["hidden_size"] // t["num_attention_heads"]
        return [Layer("window", kv(t["num_key_value_heads"], hd, b), span=t["sliding_window"])] * t[
            "num_hidden_layers"
        ]
    if mt == "llama4":
        per = kv(t["num_key_value_heads"], t["head_dim"], b)
        # NoPE (full attention) every 4th layer, chunked local otherwise
        return [
            Layer("grow", per)
            if (i + 1) % 4 == 0
            else Layer("chunk", per, span=t["attention_chunk_size"])
            for i in range(t["num_hidden_layers"])
        ]
    if mt == "nemotron_h":
        attn = Layer("grow", kv(c["num_key_value_heads"], c["head_dim"], b))
        inner = c["mamba_num_heads"] * c["mamba_head_dim"]
        st = Layer(
            "state",
            state=(c["conv_kernel"] - 1) * (inner + 2 * c["n_groups"] * c["ssm_state_size"]) * b
            + inner * c["ssm_state_size"] * 4,
        )  # float32 SSM state
        return [attn if ch == "*" else st for ch in c["hybrid_override_pattern"] if ch in "M*"]
    if mt in ("qwen3_next", "qwen3_5", "qwen3_5_moe"):
        n = t["num_hidden_layers"]
        kinds = t.get("layer_types") or [
            "full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)
        ]
        st = gdn_layer(t, b, DT.get(t.get("mamba_ssm_dtype", ""), b))
        attn = Layer("grow", kv(t["num_key_value_heads"], t["head_dim"], b))
        return [attn if k == "full_attention" else st for k in kinds]
    if mt == "zamba2":
        inner = c["mamba_expand"] * c["hidden_size"]
        st = Layer(
            "state",
            state=(c["mamba_d_conv"] - 1)
            * (inner + 2 * c["mamba_ngroups"] * c["mamba_d_state"])
            * b
            + c["n_mamba_heads"] * c["mamba_headdim"] * c["mamba_d_state"] * b,
        )
        attn = Layer("grow", kv(c["num_key_value_heads"], c["attention_head_dim"], b))
        out: list[Layer] = []
        for k in c["layers_block_type"]:
            out += [attn, st] if k == "hybrid" else [st]
        return out
    if mt in ("whisper", "bart", "t5"):
        if mt == "t5":
            enc, dec, per, span = (
                c["num_layers"],
                c["num_layers"],
                kv(c["num_heads"], c["d_kv"], b),
                c["n_positions"],
            )
        else:
            heads = c["decoder_attention_heads"]
            per = kv(heads, c["d_model"] // heads, b)
            enc, dec = c["encoder_layers"], c["decoder_layers"]
            span = c["max_source_positions"] if mt == "whisper" else c["max_position_embeddings"]
        # encoder layers keep no cache; each decoder layer: self + cross attention
        return [Layer("none")] * enc + [Layer("grow", per), Layer("cross", per, span=span)] * dec
    if mt == "kimi_linear":
        lac = c["linear_attn_config"]
        h, d, k = lac["num_heads"], lac["head_dim"], lac["short_conv_kernel_size"]
        st = Layer(
            "state", state=3 * h * d * (k - 1) * b + h * d * d * 4
        )  # KDA: fp32 recurrent state
        mla = Layer("grow", (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * b)
        return [
            mla if i + 1 in lac["full_attn_layers"] else st for i in range(c["num_hidden_layers"])
        ]
    if mt == "bailing_hybrid":
        h, d, k = c["num_attention_heads"], c["head_dim"], c["short_conv_kernel_size"]
        st = Layer("state", state=3 * h * d * (k - 1) * b + h * d * d * 4)
        mla = Layer("grow", (c["kv_lora_rank"] + c["qk_rope_head_dim"]) * b)
        return [
            mla if (i + 1) % c["layer_group_size"] == 0 else st
            for i in range(c["num_hidden_layers"])
        ]
    if mt == "minimax":
        st = Layer("state", state=c["num_attention_heads"] * c["head_dim"] ** 2 * b)  # lightning
        attn = Layer("grow", kv(c["num_key_value_heads"], c["head_dim"], b))
        return [attn if k == "full_attention" else st for k in c["layer_types"]]
    if mt == "olmo_hybrid":
        st = gdn_layer(c, b, b)
        attn = Layer(
            "grow", kv(c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"], b)
        )
        return [attn if i % 4 == 3 else st for i in range(c["num_hidden_layers"])]
    if mt in ("lfm2", "lfm2_moe"):
        st = Layer("state", state=c["hidden_size"] * (c["conv_L_cache"] - 1) * b)
        attn = Layer(
            "grow", kv(c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"], b)
        )
        return [attn if k == "full_attention" else st for k in c["layer_types"]]
    if mt == "recurrent_gemma":
        lru = c["lru_width"]
        st = Layer("state", state=lru * (c["conv1d_width"] - 1) * b + lru * 4)
        attn = Layer(
            "window",
            kv(c["num_key_value_heads"], c["hidden_size"] // c["num_attention_heads"], b),
            span=c["attention_window_size"],
        )
        return [attn if i % 3 == 2 else st for i in range(c["num_hidden_layers"])]
    if mt in ("mamba", "falcon_mamba"):
        inner = c["intermediate_size"]
        return [
            Layer("state", state=inner * (c["conv_kernel"] - 1) * b + inner * c["state_size"] * b)
        ] * c["num_hidden_layers"]
    if mt == "mamba2":
        inner = c["expand"] * c["hidden_size"]
        return [
            Layer(
                "state",
                state=mamba2_bytes(
                    c["num_heads"],
                    c["head_dim"],
                    c["n_groups"],
                    c["state_size"],
                    c["conv_kernel"],
                    inner,
                    b,
                    b,
                ),
            )
        ] * c["num_hidden_layers"]
    if mt == "mllama":
        v = c["vision_config"]
        tokens = (
            v["max_num_tiles"] * math.ceil(((v["image_size"] // v["patch_size"]) ** 2 + 1) / 8) * 8
        )
        per = kv(t["num_key_value_heads"], t["hidden_size"] // t["num_attention_heads"], b)
        return [
            Layer("cross", per, span=tokens)
            if i in t["cross_attention_layers"]
            else Layer("grow", per)
            for i in range(t["num_hidden_layers"])
        ]
    raise AssertionError(f"no expectation written for {name} ({mt})")


KIND = {
    "grow": ("full_attention", "mla", "sparse_mla"),
    "window": ("sliding_window",),
    "chunk": ("chunked_local",),
    "cross": ("cross_attention",),
    "state": ("state",),
    "none": ("encoder_only",),
}


@pytest.mark.parametrize("name", list_models())
def test_layers_match_the_config(name: str) -> None:
    model = load_model(name)
    want = expected_layers(name)
    cache = list(model.layer_specs)
    assert len(cache) == len(want), name
    for i, (spec, layer) in enumerate(zip(cache, want, strict=True)):
        assert spec.kind in KIND[layer.kind], (name, i, spec)
        if layer.kind == "none":
            assert spec.page_size_bytes(16) == 0
        elif layer.kind == "state":
            assert spec.page_size_bytes(16) == layer.state, (name, i)
        else:
            assert spec.bytes_per_token == layer.bpt, (name, i, spec)
        if layer.kind == "window":
            assert spec.window == layer.span  # type: ignore[union-attr]
        if layer.kind == "chunk":
            assert spec.chunk_size == layer.span  # type: ignore[union-attr]
        if layer.kind == "cross":
            assert spec.max_encoder_len == layer.span  # type: ignore[union-attr]
    assert model_source(name).splitlines()[0].count("/") == 1  # a Hugging Face id


def window_blocks(kind: str, span: int, bs: int, s: int, m: int, big_b: int) -> int:
    """Tight window pool size, from the planner's documented theorem, written anew."""
    a = span + bs - 2 if kind == "window" else span - 1 + bs - math.gcd(span, bs)
    cap = -(-m // bs)
    f0 = min(-(-a // bs), cap)
    if f0 >= cap:
        return s * cap
    d = bs * -(-a // bs) - a + 1
    k1 = min(s, big_b // d)
    k2 = min((big_b - k1 * d) // bs, k1 * (cap - f0 - 1))
    return s * f0 + k1 + k2


def expected_capacity(name: str, mem: int, s: int, m: int, big_b: int, bs: int = 16) -> int:
    bounded = 0
    growing_page = 0
    groups: dict[Layer, int] = {}
    for layer in expected_layers(name):
        groups[layer] = groups.get(layer, 0) + 1
    for layer, count in groups.items():
        if layer.kind == "none":
            continue
        if layer.kind == "grow" or (layer.kind in ("window", "chunk") and layer.span >= m):
            growing_page += count * layer.bpt * bs
        elif layer.kind == "state":
            bounded += (2 * s + 1) * count * layer.state
        elif layer.kind == "cross":
            bounded += (s * -(-layer.span // bs) + 1) * count * layer.bpt * bs
        else:
            bounded += (
                (window_blocks(layer.kind, layer.span, bs, s, m, big_b) + 1)
                * count
                * layer.bpt
                * bs
            )
    if not growing_page:
        return s * m
    return ((mem - bounded) // growing_page - 1) * bs


def limits_for(name: str) -> tuple[int, int, int, int]:
    c = cfg(name)
    m = {"whisper": 448, "bart": 1024, "t5": 512}.get(c["model_type"], 32768)
    return 80 << 30, 16, m, 8192


@pytest.mark.parametrize("name", list_models())
def test_capacity_matches_an_independent_per_layer_computation(name: str) -> None:
    mem, s, m, big_b = limits_for(name)
    plan = plan_memory(
        load_model(name),
        memory_bytes=mem,
        max_num_seqs=s,
        max_model_len=m,
        max_num_batched_tokens=big_b,
    )
    want = expected_capacity(name, mem, s, m, big_b)
    # the planner may differ only by the null blocks of its growing groups
    assert abs(plan.token_capacity - want) <= 16 * max(1, len(plan.growing_groups)), (
        name,
        plan.token_capacity,
        want,
    )


def test_sparse_mla_runs_end_to_end_as_a_growing_group() -> None:
    model = load_model("deepseek-v3.2-exp")
    spec = model.layer_specs[0]
    assert isinstance(spec, SparseMLASpec)
    assert spec.bytes_per_token == (512 + 64) * 2 + 128 * 2
    fp8 = load_model("deepseek-v3.2-exp", kv_dtype="fp8").layer_specs[0]
    assert fp8.bytes_per_token == (512 + 64) + 128 + 4  # fp8 key + one fp32 scale per 128
    plan = plan_memory(
        model, memory_bytes=8 << 30, max_num_seqs=4, max_model_len=4096, max_num_batched_tokens=1024
    )
    (group,) = plan.groups
    assert group.kind == "sparse_mla" and group.grows
    mgr = KVCacheManager(plan, enable_prefix_caching=True, hash_seed=0)
    tokens = np.arange(1, 200, dtype=np.int32)
    mgr.add_requests([1], [tokens])
    assert mgr.allocate_slots([1], mgr.num_tokens([1]))
    (table,) = mgr.block_tables([1])
    assert int((table[0] > 0).sum()) == -(-199 // 16)
    mgr.free([1])
    mgr.add_requests([2], [tokens])
    assert int(mgr.get_computed_tokens([2])[0]) >= 192  # prefix hit through the new kind


def test_glm5_shared_indexer_layers_keep_only_the_latent() -> None:
    c = cfg("glm-5")
    c["indexer_types"] = ["full" if i % 2 == 0 else "shared" for i in range(c["num_hidden_layers"])]
    from hybridkv.models import model_from_config

    m = model_from_config(c)
    assert [s.kind for s in m.layer_specs[:4]] == ["sparse_mla", "mla", "sparse_mla", "mla"]


def test_gemma3n_shared_layers_hold_no_cache() -> None:
    m = load_model("gemma-3n-e4b-it")
    t = cfg("gemma-3n-e4b-it")["text_config"]
    assert m.num_layers == t["num_hidden_layers"] - t["num_kv_shared_layers"] == 20
    assert m.layer_names[-1] == "layers.19"
    assert any("text model" in n for n in m.notes)


def test_mixtral_and_phi3_slide_when_a_window_is_set() -> None:
    from hybridkv.models import model_from_config

    c = cfg("mixtral-8x7b")
    c["sliding_window"] = 4096
    assert {s.kind for s in model_from_config(c).layer_specs} == {"sliding_window"}
    c = cfg("phi-3-mini-4k")
    assert {getattr(s, "window", None) for s in load_model("phi-3-mini-4k").layer_specs} == {2047}
    c["sliding_window"] = None
    assert {s.kind for s in model_from_config(c).layer_specs} == {"full_attention"}


def test_unfit_refusal_names_the_largest_max_num_seqs_that_fits() -> None:
    import re

    from hybridkv.errors import PlanError

    model = load_model("mamba-2.8b")  # state only: bounded pools scale with max_num_seqs
    kw = {"memory_bytes": 1 << 30, "max_model_len": 4096, "max_num_batched_tokens": 1024}
    with pytest.raises(PlanError) as err:
        plan_memory(model, max_num_seqs=4096, **kw)  # type: ignore[arg-type]
    msg = str(err.value)
    found = re.search(r"largest --max-num-seqs that fits is (\d+) \(now 4096\)", msg)
    assert found, msg
    best = int(found.group(1))
    plan_memory(model, max_num_seqs=best, **kw)  # type: ignore[arg-type]
    with pytest.raises(PlanError):
        plan_memory(model, max_num_seqs=best + 1, **kw)  # type: ignore[arg-type]
    mib = int(re.search(r"raise --memory to (\d+) MiB", msg).group(1))  # type: ignore[union-attr]
    plan_memory(model, max_num_seqs=4096, **{**kw, "memory_bytes": mib << 20})  # type: ignore[arg-type]
    with pytest.raises(PlanError):
        plan_memory(model, max_num_seqs=4096, **{**kw, "memory_bytes": (mib - 1) << 20})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("model_type", "enc_bound"),
    [("led", 16384), ("pegasus_x", 4096), ("fsmt", 1024), ("bigbird_pegasus", 4096)],
)
def test_bart_like_encoder_decoders_layer_by_layer(model_type: str, enc_bound: int) -> None:
    from hybridkv.models import model_from_config

    c: dict[str, Any] = {
        "model_type": model_type,
        "d_model": 1024,
        "encoder_layers": 3,
        "decoder_layers": 2,
        "decoder_attention_heads": 16,
        "torch_dtype": "bfloat16",
    }
    if model_type == "led":  # LEDConfig bounds the two sides apart
        c |= {"max_encoder_position_embeddings": 16384, "max_decoder_position_embeddings": 1024}
    else:
        c["max_position_embeddings"] = enc_bound
    m = model_from_config(c)
    assert [s.kind for s in m.layer_specs] == ["encoder_only"] * 3 + [
        "full_attention",
        "cross_attention",
    ] * 2
    per = kv(16, 64, 2)
    assert all(s.bytes_per_token == per for s in m.layer_specs[3:])
    assert m.layer_specs[4].max_encoder_len == enc_bound  # type: ignore[attr-defined]
    assert m.layer_names[3:5] == ("decoder.layers.0.self_attn", "decoder.layers.0.encoder_attn")
    assert m.layer_indices[3:] == (0, 0, 1, 1)


def test_lfm3_conv_sliding_and_full_layers() -> None:
    from hybridkv.models import model_from_config

    c: dict[str, Any] = {
        "model_type": "lfm3",
        "hidden_size": 2048,
        "num_hidden_layers": 12,
        "num_attention_heads": 16,
        "num_key_value_heads": 4,
        "torch_dtype": "bfloat16",
    }  # Lfm3Config defaults: head_dim 128, conv_L_cache 7, sliding_window 256
    m = model_from_config(c)
    # Lfm3Config's pattern: full at i % 4 == 2, sliding at i % 4 == 0 (i > 0), conv else
    want = ["state", "state", "full_attention", "state"] + [
        "sliding_window",
        "state",
        "full_attention",
        "state",
    ] * 2
    assert [s.kind for s in m.layer_specs] == want
    for spec in m.layer_specs:
        if spec.kind == "state":
            assert spec.page_size_bytes(16) == 2048 * (7 - 1) * 2
        else:
            assert spec.bytes_per_token == kv(4, 128, 2)
    assert {getattr(s, "window", None) for s in m.layer_specs if s.kind == "sliding_window"} == {
        256
    }
    c["sliding_window"] = None
    assert "sliding_window" not in {s.kind for s in model_from_config(c).layer_specs}
    c["layer_types"] = ["conv", "sliding_attention"] * 6
    c["sliding_window"] = 512
    m = model_from_config(c)
    assert [s.kind for s in m.layer_specs] == ["state", "sliding_window"] * 6
    assert m.layer_indices == tuple(range(12))


def test_minimax_legacy_attn_type_list() -> None:
    from hybridkv.models import model_from_config

    c = cfg("minimax-text-01")
    want = list(c.pop("layer_types"))
    # the original MiniMax-Text-01 spelling: one softmax layer after seven lightning
    c["model_type"] = "minimax_text_01"
    c["attn_type_list"] = ([0] * 7 + [1]) * 10
    m = model_from_config(c)
    assert [s.kind for s in m.layer_specs] == [
        "full_attention" if k == "full_attention" else "state" for k in want
    ]
    assert m.layer_specs == load_model("minimax-text-01").layer_specs
    c["attn_type_list"] = [0, 1]
    with pytest.raises(ModelConfigError, match="attn_type_list must list 80"):
        model_from_config(c)


@pytest.mark.parametrize(("name", "bound"), [("whisper-large-v3", 448), ("bart-large", 1024)])
def test_learned_positions_bound_max_model_len(name: str, bound: int) -> None:
    from hybridkv.errors import PlanError

    model = load_model(name)
    assert model.max_model_len == bound
    kw = {"memory_bytes": 8 << 30, "max_num_seqs": 4, "max_num_batched_tokens": 512}
    plan_memory(model, max_model_len=bound, **kw)  # type: ignore[arg-type]
    with pytest.raises(PlanError, match=f"exceeds the {bound} positions.*--max-model-len {bound}"):
        plan_memory(model, max_model_len=bound + 1, **kw)  # type: ignore[arg-type]
    assert load_model("t5-base").max_model_len is None  # relative positions: no bound
    assert load_model("llama-3.1-8b").max_model_len is None
