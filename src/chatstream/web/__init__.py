"""The bundled web UI (static files served by ``chatstream.adapters.starlette``)."""
