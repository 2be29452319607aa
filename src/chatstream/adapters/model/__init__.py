"""Everything that runs a model: the model thread and the pool of threads, the backend
protocol, the transformers backend (per-slot KV cache, split attention, batched sampling,
the decode step replayed from CUDA graphs in ``decode_graphs``), the mock backend, loading
and placement, chat templates.

Nothing here knows HTTP or the facade; the driver (:mod:`chatstream.adapters.driver`) sends
step plans in and takes step results out.
"""
