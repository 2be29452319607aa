"""The bundled web UI: static files and vendored libraries, served by
:mod:`chatstream.adapters.http.web_ui`."""
