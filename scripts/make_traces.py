"""Regenerate the bundled serving traces (python/hybridkv/serving/data/traces/*.json.gz).

Deterministic: the same generator code and seeds always give the same bytes, and
tests/test_traces_bundled.py checks the committed files against a fresh generation.
Usage: ``python scripts/make_traces.py [OUT_DIR]``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from hybridkv.traces import GENERATORS

DEFAULT_DIR = Path(__file__).resolve().parents[1] / "python" / "hybridkv" / "data" / "traces"


def main(argv: list[str]) -> int:
    out = Path(argv[0]) if argv else DEFAULT_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, make in GENERATORS.items():
        trace = make()
        path = out / f"{name}.json.gz"
        trace.save(path)
        s = trace.summary()
        print(
            f"{path}: {s['requests']} requests, {s['prompt_tokens']} prompt tokens, "
            f"{s['output_tokens']} output tokens, {path.stat().st_size} bytes"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
