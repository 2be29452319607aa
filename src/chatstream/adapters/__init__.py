"""Thin AnyIO adapters that drive :mod:`chatstream.core`: the engine driver, the model
thread, model backends, and (later) the HTTP routes.

Nothing here imports asyncio or trio: the same code runs on both. Heavy modules (torch,
transformers) are imported only by the backends that need them.
"""
