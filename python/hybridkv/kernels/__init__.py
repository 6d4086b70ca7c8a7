"""Triton kernels (shipped in the wheel as ``hybridkv.kernels``).

Importing this package imports triton; the core package never does. Launch the
kernels through :mod:`hybridkv.ops`, which checks arguments and picks tile sizes.

Cache layouts the kernels read and write (all row-major, last dim contiguous):

- attention K and V, one tensor each per layer: ``[num_blocks, block_size,
  num_kv_heads, head_size]``; token slot ``s`` lives at block ``s // block_size``,
  offset ``s % block_size``; block 0 is the null block and is never read;
- Mamba-2 conv state ``[num_slots, d_conv - 1, conv_dim]`` (oldest input first) and
  SSM state ``[num_slots, num_heads, head_dim, d_state]``;
- gated-delta-net state ``[num_slots, num_v_heads, head_v_dim, head_k_dim]`` (``S``
  maps keys to values: ``o = S q``).
"""
