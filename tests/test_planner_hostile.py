"""plan_memory on absurd budgets (issue 15 item 11): a PlanError, never OverflowError."""

from __future__ import annotations

import pytest
from hybridkv.errors import PlanError
from hybridkv.models import load_model
from hybridkv.planner import MAX_MEMORY_BYTES, plan_memory

LIMITS = {"max_num_seqs": 4, "max_model_len": 4096, "max_num_batched_tokens": 2048}


@pytest.mark.parametrize("bits", [1027, 1329, 63, 16610], ids=lambda b: f"2**{b}")
@pytest.mark.parametrize("layout", ["static", "elastic"])
def test_memory_beyond_int64_is_a_plan_error(bits: int, layout: str) -> None:
    with pytest.raises(PlanError, match="8 EiB"):
        plan_memory(load_model("bamba-9b"), memory_bytes=2**bits, layout=layout, **LIMITS)


def test_the_largest_budget_still_plans() -> None:
    plan = plan_memory(load_model("bamba-9b"), memory_bytes=MAX_MEMORY_BYTES, **LIMITS)
    assert plan.token_capacity > 0
