"""The cache core: per-group block pools, the elastic arena, the KV-cache manager a
serving engine's scheduler calls each step, prefix hashes and the events they emit."""
