"""Synthetic serving traces: :class:`TraceBuilder` (segments and requests in, a
:class:`~hybridkv.serving.trace_table.Trace` out) and the generators of the bundled
traces (``chat``, ``docqa``, ``agentic``), which ``scripts/make_traces.py`` writes to
``serving/data/traces/``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import numpy.typing as npt

from hybridkv.serving.trace_table import DEFAULT_VOCAB_SIZE, I32, Trace


class TraceBuilder:
    """Collects segments and requests; the generators below use it, tests may too."""

    def __init__(self, name: str, description: str, *, seed: int, vocab_size: int) -> None:
        self.name = name
        self.description = description
        self.vocab_size = vocab_size
        # Segment seeds are seed-scoped so segments of different traces never collide.
        self._seed_base = (seed & 0xFFFF) << 20
        self._seg_len: list[int] = []
        self._arrival: list[float] = []
        self._parent: list[int] = []
        self._priority: list[int] = []
        self._output: list[int] = []
        self._prompt: list[list[int]] = []
        self._literal: dict[int, I32] = {}

    def segment(self, length: int) -> int:
        """A fresh segment of ``length`` synthetic tokens; returns its index."""
        self._seg_len.append(max(0, int(length)))
        return len(self._seg_len) - 1

    def literal(self, tokens: npt.ArrayLike) -> int:
        """A segment of these literal token ids (e.g. a tokenized message); its index."""
        toks = np.asarray(tokens, dtype=np.int32).reshape(-1)
        idx = self.segment(toks.shape[0])
        self._literal[idx] = toks
        return idx

    def request(
        self,
        prompt: Sequence[int],
        output_len: int,
        *,
        arrival: float,
        parent: int = -1,
        priority: int = 0,
        output: int | None = None,
    ) -> tuple[int, int]:
        """Add a request; returns ``(request index, output segment index)``. The output
        is a fresh segment of ``output_len`` tokens, or the given segment ``output``."""
        out = self.segment(max(1, output_len)) if output is None else output
        self._prompt.append(list(prompt))
        self._output.append(out)
        self._arrival.append(float(arrival))
        self._parent.append(parent)
        self._priority.append(priority)
        return len(self._output) - 1, out

    def build(self) -> Trace:
        n_seg = len(self._seg_len)
        lens = [len(p) for p in self._prompt]
        return Trace(
            name=self.name,
            description=self.description,
            vocab_size=self.vocab_size,
            seg_seed=self._seed_base + np.arange(n_seg, dtype=np.int64),
            seg_len=np.asarray(self._seg_len, dtype=np.int64),
            arrival=np.asarray([round(a, 6) for a in self._arrival], dtype=np.float64),
            parent=np.asarray(self._parent, dtype=np.int64),
            priority=np.asarray(self._priority, dtype=np.int64),
            output_seg=np.asarray(self._output, dtype=np.int64),
            prompt_segs=np.asarray([s for p in self._prompt for s in p], dtype=np.int64),
            prompt_offsets=np.concatenate([[0], np.cumsum(lens)]).astype(np.int64),
            seg_tokens=dict(self._literal),
        )


def _rng(seed: int) -> np.random.Generator:
    # Only the generators use numpy's RNG; the bundled files are the reference, and a
    # test regenerates them, so a stream change in numpy would be caught, not silent.
    return np.random.default_rng(seed)


def make_chat(
    *,
    seed: int = 1,
    conversations: int = 200,
    system_prompts: int = 4,
    rate: float = 10.0,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Trace:
    """Multi-turn chat: each conversation opens with one of a few shared system prompts and
    runs 2-6 turns; every turn's prompt is the whole history (earlier user messages and
    the model's own earlier answers) plus a new message, sent 1-10 s after the previous
    answer finished. Conversations start as a Poisson process at ``rate`` per second."""
    rng = _rng(seed)
    b = TraceBuilder(
        "chat",
        "multi-turn chat over shared system prompts (closed-loop turns)",
        seed=seed,
        vocab_size=vocab_size,
    )
    systems = [b.segment(int(rng.integers(500, 2000))) for _ in range(system_prompts)]
    t = 0.0
    for _ in range(conversations):
        t += float(rng.exponential(1.0 / rate))
        history = [systems[int(rng.integers(system_prompts))]]
        parent = -1
        for turn in range(int(rng.integers(2, 7))):
            history.append(b.segment(int(rng.integers(20, 400))))
            arrival = t if turn == 0 else float(rng.uniform(1.0, 10.0))
            idx, out = b.request(
                history, int(rng.integers(40, 400)), arrival=arrival, parent=parent
            )
            history = [*history, out]
            parent = idx
    return b.build()


def make_docqa(
    *,
    seed: int = 2,
    documents: int = 6,
    questions: int = 300,
    rate: float = 12.0,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Trace:
    """Long-document QA: a few long documents (6k-14k tokens) behind one instruction
    preamble; independent questions arrive as a Poisson process at ``rate`` per second,
    each about one document (skewed: the first document is asked about most), and a
    third of them get one follow-up question 2-15 s after the answer."""
    rng = _rng(seed)
    b = TraceBuilder(
        "docqa",
        "long-document QA over a few shared documents, some follow-ups",
        seed=seed,
        vocab_size=vocab_size,
    )
    preamble = b.segment(120)
    docs = [b.segment(int(rng.integers(6000, 14000))) for _ in range(documents)]
    weights = 1.0 / np.arange(1, documents + 1)
    weights /= weights.sum()
    t = 0.0
    for _ in range(questions):
        t += float(rng.exponential(1.0 / rate))
        doc = docs[int(rng.choice(documents, p=weights))]
        prompt = [preamble, doc, b.segment(int(rng.integers(15, 120)))]
        idx, out = b.request(prompt, int(rng.integers(30, 300)), arrival=t)
        if rng.random() < 1.0 / 3.0:
            follow = [*prompt, out, b.segment(int(rng.integers(10, 80)))]
            b.request(
                follow,
                int(rng.integers(30, 200)),
                arrival=float(rng.uniform(2.0, 15.0)),
                parent=idx,
            )
    return b.build()


def make_agentic(
    *,
    seed: int = 3,
    sessions: int = 80,
    agents: int = 2,
    rate: float = 8.0,
    vocab_size: int = DEFAULT_VOCAB_SIZE,
) -> Trace:
    """Agent loops: each session runs under one of a few long shared prefixes (system
    prompt plus tool definitions, 4k-8k tokens), states a task, then alternates model
    turns (a short tool call) with tool results (100-1500 tokens) appended to the
    context, 3-9 tool calls and a final answer. The next turn arrives 0.1-2 s (tool
    latency) after the previous one finished; sessions start at ``rate`` per second."""
    rng = _rng(seed)
    b = TraceBuilder(
        "agentic",
        "agent sessions with long shared tool prefixes and tool-call turns",
        seed=seed,
        vocab_size=vocab_size,
    )
    prefixes = [b.segment(int(rng.integers(4000, 8000))) for _ in range(agents)]
    t = 0.0
    for _ in range(sessions):
        t += float(rng.exponential(1.0 / rate))
        ctx = [prefixes[int(rng.integers(agents))], b.segment(int(rng.integers(100, 800)))]
        calls = int(rng.integers(3, 10))
        parent = -1
        for turn in range(calls + 1):
            final = turn == calls
            out_len = int(rng.integers(200, 600)) if final else int(rng.integers(30, 200))
            arrival = t if turn == 0 else float(rng.uniform(0.1, 2.0))
            idx, out = b.request(ctx, out_len, arrival=arrival, parent=parent)
            ctx = [*ctx, out, b.segment(int(rng.integers(100, 1500)))]
            parent = idx
    return b.build()


GENERATORS: dict[str, Callable[..., Trace]] = {
    "chat": make_chat,
    "docqa": make_docqa,
    "agentic": make_agentic,
}


__all__ = ["GENERATORS", "TraceBuilder", "make_agentic", "make_chat", "make_docqa"]
