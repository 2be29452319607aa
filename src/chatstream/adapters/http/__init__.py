"""Everything that speaks HTTP: the app factory and routes (:mod:`.app`), the original API
(:mod:`.original_api`), the OpenAI-compatible API (:mod:`.openai_api`), streaming formats
(:mod:`.streaming`) and their resumption (:mod:`.resumable`, :mod:`.resumable_routes`),
sessions, their stores and the turn lock (:mod:`.sessions`, :mod:`.session_stores`,
:mod:`.redis_store`, :mod:`.turn_guard`), a session's conversations and their versions
(:mod:`.conversation_routes`), metrics (:mod:`.metrics`), resource usage
(:mod:`.resources`) and the web UI files (:mod:`.web_ui`).

It is typed against :class:`chatstream.adapters.service.ChatService` and never imports the
facade (:mod:`chatstream.chat_stream`).
"""
