"""Test helpers that need the ``kernels`` extra (torch + triton): the tiny hybrid model."""
