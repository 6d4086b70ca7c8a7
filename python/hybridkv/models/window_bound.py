"""The tight bound on the blocks a sliding-window or chunked-local pool needs.

A bounded group's pool size is a property of the window and of the manager's
free-then-allocate order, not of any one plan: the planner sizes pools with it, the
specs report one request's share with it, and the manager's tests check it holds.

Sliding-window and chunked-local pools: the tight bound
-------------------------------------------------------
Notation: window ``W`` (a token at position ``p`` attends to ``p-W+1 .. p``) or chunk
``C`` (``p`` attends to ``C*floor(p/C) .. p``), block size ``b``, ``S =
max_num_seqs``, ``B = max_num_batched_tokens``, ``M = max_model_len``.

Manager contract (what the bound assumes; the manager implements exactly this):

1. Blocks are indexed by absolute position: block ``i`` of a request holds positions
   ``i*b .. i*b+b-1``; blocks that left the window are freed and their table slots
   set to the null block.
2. One ``allocate_slots`` call per step. In that call the manager FIRST frees, for
   every request it holds (in practice: those allocated in the previous call and in
   this one), every window block lying wholly before the request's *first needed
   position* ``s(c) = max(0, c - W + 1)`` (sliding window) or ``C*floor(c/C)``
   (chunked local), where ``c`` is the request's computed-token count including the
   previous step's tokens; only THEN does it allocate, for each scheduled request, the
   blocks up to position ``c + n - 1`` for its ``n`` new (plus lookahead) tokens.
   So during a step a request holds exactly the blocks that meet ``[s(c), c + n)``: the
   ``W - 1`` tokens before its first new token (or the current chunk's earlier tokens)
   plus its new tokens, and a request not scheduled holds ``[s(c), c)``.
3. Prefix hits touch only blocks meeting ``[s(h), h)`` for the hit length ``h``.
4. At most ``S`` requests hold blocks at once, the new (plus lookahead) tokens of one
   call sum to at most ``B``, and ``c + n <= M``.

Theorem. Let ``A = W + b - 2`` (sliding window) or ``A = C - 1 + b - gcd(C, b)``
(chunked local), ``cap = cdiv(M, b)`` and ``f(n) = min(cdiv(A + n, b), cap)``. Then a
request with ``n`` new tokens holds at most ``f(n)`` blocks, and the whole pool holds
at most ``T = S*f(0) + k1 + k2`` blocks (plus the null block), where, when
``f(0) < cap``, ``d = b*cdiv(A, b) - A + 1``, ``k1 = min(S, B // d)`` and
``k2 = min((B - k1*d) // b, k1*(cap - f(0) - 1))`` (both 0 when ``f(0) = cap``).

Proof. Per request: the held positions form the interval ``[s, c + n)`` of length
``L = c + n - s``. An interval of length ``L >= 1`` whose start has offset ``q = s mod
b`` inside its block meets ``cdiv(q + L, b)`` blocks. Sliding window: if ``c < W - 1``
then ``s = 0``, ``q = 0`` and ``L = c + n < W - 1 + n``; otherwise ``L = W - 1 + n``
and ``q <= b - 1``; so the count is at most ``cdiv(W - 1 + n + b - 1, b) =
cdiv(A + n, b)``, and never more than the ``cap`` blocks below position ``M``. It is
reached (so ``f`` is exact) by ``c = W + b - 2`` when ``c + n <= M``, and otherwise by
``c = M - n``, which meets all ``cap`` blocks below ``M``. Chunked local: ``s`` is a
multiple of ``C``, so ``q`` is a multiple of ``g = gcd(C, b)`` and at most ``b - g``,
and ``L = (c - s) + n <= C - 1 + n``: at most ``cdiv(A + n, b)``, and at most ``cap``.
(``f`` is exact for chunks when ``M >= C*b/g + B``; below that it is an upper bound.)
Pool: at any instant the pool holds at most ``sum_r f(n_r)`` over at most ``S``
requests with ``sum_r n_r <= B``. ``f`` starts at ``f(0)``; its first step up costs
``d`` tokens (``cdiv(A + n, b)`` rises when ``A + n`` passes the next multiple of
``b``), each later step costs exactly ``b``, and it stops at ``cap``. Every step is
worth one block and ``d <= b``, so buying steps cheapest-first is optimal (an exchange
argument: swapping a later step of cost ``b`` for an unused first step of cost
``d <= b`` never lowers the count): first steps for ``k1`` requests, then ``k2``
steps of cost ``b`` within the caps. Hence ``T`` is an upper bound, and the schedule
that puts every request at its worst offset and spends the budget this way reaches
it, so for sliding windows (``W >= 2``) it is exact. QED.

The bound holds at every instant only if rule 2's order holds (free everything first,
then allocate): a manager that frees request ``j``'s stale blocks after allocating for
request ``i`` can transiently exceed it. ``bounded_sizing="per_request"`` gives every
request its own worst case instead (the larger of the issue's formulas, sliding
``cdiv(min(W - 1 + B, M), b) + 1`` / chunked ``cdiv(min(C + B, M), b)``, and ``f(B)``).

A window or chunk of at least ``max_model_len`` never slides within a request: such a
group is planned as growing (it is full attention in all but name).
"""

from __future__ import annotations

import math

from hybridkv.errors import PlanError

#: ``bounded_sizing`` choices: the exact worst case, or each request's own worst case.
BOUNDED_SIZINGS = ("tight", "per_request")


def _cdiv(a: int, b: int) -> int:
    # specs.cdiv, kept local: specs imports this module.
    return -(-a // b)


def _window_offset(kind: str, span: int, block_size: int) -> int:
    """``A`` of the module docstring: tokens before the new ones, plus worst offset."""
    if kind == "sliding_window":
        return span + block_size - 2
    if kind == "chunked_local":
        return span - 1 + block_size - math.gcd(span, block_size)
    raise PlanError(f"no window bound for kind {kind!r}")


def window_request_blocks(
    kind: str, span: int, block_size: int, max_model_len: int, new_tokens: int
) -> int:
    """``f(n)``: most blocks one request holds in a step with ``new_tokens`` new tokens.

    ``kind`` is ``"sliding_window"`` (``span`` = window) or ``"chunked_local"``
    (``span`` = chunk size). See the module docstring for the proof.
    """
    a = _window_offset(kind, span, block_size)
    return min(_cdiv(a + new_tokens, block_size), _cdiv(max_model_len, block_size))


def window_pool_blocks(
    kind: str,
    span: int,
    *,
    block_size: int,
    max_num_seqs: int,
    max_model_len: int,
    max_num_batched_tokens: int,
    bounded_sizing: str = "tight",
) -> int:
    """Blocks (null block excluded) a sliding-window / chunked-local pool needs.

    ``"tight"``: the exact worst case over all schedules (module docstring);
    ``"per_request"``: ``max_num_seqs`` times one request's own worst case.
    """
    b, s, m, big_b = block_size, max_num_seqs, max_model_len, max_num_batched_tokens
    if bounded_sizing == "per_request":
        if kind == "sliding_window":
            issue = _cdiv(min(span - 1 + big_b, m), b) + 1
        else:
            issue = _cdiv(min(span + big_b, m), b)
        return s * max(issue, window_request_blocks(kind, span, b, m, big_b))
    if bounded_sizing != "tight":
        raise PlanError(f"bounded_sizing must be one of {BOUNDED_SIZINGS}, got {bounded_sizing!r}")
    a = _window_offset(kind, span, b)
    cap = _cdiv(m, b)
    f0 = min(_cdiv(a, b), cap)
    if f0 >= cap:
        return s * cap
    first_step = b * _cdiv(a, b) - a + 1
    k1 = min(s, big_b // first_step)
    k2 = min((big_b - k1 * first_step) // b, k1 * (cap - f0 - 1))
    return s * f0 + k1 + k2
