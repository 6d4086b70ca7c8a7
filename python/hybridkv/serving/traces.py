"""Serving traces for the simulator: who arrives when, with which prompt, wanting how much.

One name for the two halves of the concept:

- :mod:`hybridkv.serving.trace_table`: the :class:`Trace` table (requests whose prompts
  are concatenations of token segments), :class:`TraceWindow`, :func:`synth_tokens`,
  the ``hybridkv-trace/1`` file format, :func:`load_trace` / :func:`list_traces`;
- :mod:`hybridkv.serving.synthetic_traces`: :class:`TraceBuilder` and the generators of
  the bundled traces (:data:`GENERATORS`: ``chat``, ``docqa``, ``agentic``).

Real traces (Mooncake, ShareGPT) are read by the modules :mod:`trace_sources` names.
"""

from __future__ import annotations

from hybridkv.serving.synthetic_traces import (
    GENERATORS,
    TraceBuilder,
    make_agentic,
    make_chat,
    make_docqa,
)
from hybridkv.serving.trace_table import (
    DEFAULT_VOCAB_SIZE,
    MAX_TRACE_FILE_BYTES,
    TRACE_FORMAT,
    Trace,
    TraceError,
    TraceWindow,
    list_traces,
    load_trace,
    synth_tokens,
)
from hybridkv.serving.trace_table import F64 as F64
from hybridkv.serving.trace_table import I32 as I32
from hybridkv.serving.trace_table import I64 as I64

__all__ = [
    "DEFAULT_VOCAB_SIZE",
    "GENERATORS",
    "MAX_TRACE_FILE_BYTES",
    "TRACE_FORMAT",
    "Trace",
    "TraceBuilder",
    "TraceError",
    "TraceWindow",
    "list_traces",
    "load_trace",
    "make_agentic",
    "make_chat",
    "make_docqa",
    "synth_tokens",
]
