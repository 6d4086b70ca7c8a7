"""Serving: the continuous-batching scheduler, the trace-driven simulator behind
``hybridkv simulate``, its cost model, the traces and their readers."""
