"""Memory planning: from a model's KV-cache groups and a byte budget to per-group block
counts (floors for bounded groups, the elastic rest), and the baseline layouts it is
compared with."""
