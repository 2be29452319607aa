"""Thin AnyIO adapters that drive :mod:`chatstream.core`, one subpackage per job.

- :mod:`.model`: everything that runs a model (the model thread and pool, the backend
  protocol, the transformers and mock backends, the sampler, loading, chat templates).
- :mod:`.http`: everything that speaks HTTP (the app factory and routes, the original API,
  the OpenAI API, streaming formats, sessions and their stores, metrics, resources).
- At the root, what joins them: :mod:`.driver` (the engine and its task group),
  :mod:`.turn` (a chat turn in flight) and :mod:`.service` (the interface the HTTP side is
  typed against); and three documented import paths kept as re-exports:
  :mod:`.starlette`, :mod:`.sessions`, :mod:`.loading`.

Nothing here imports asyncio or trio: the same code runs on both. Heavy modules (torch,
transformers, starlette) are imported only by the modules that need them.
"""
