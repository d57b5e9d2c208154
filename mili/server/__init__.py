"""The OpenAI-compatible server (chapter 06): `mili serve` runs `mili.server.cli:main`.

Modules: `protocol` (request models, response bodies), `errors` (OpenAI-shaped errors),
`async_engine` (the engine thread and per-request streams), `streaming` (SSE chunks, exercise
6.1), `metrics` (Prometheus, exercise 6.2), `app` (the FastAPI endpoints), `cli` (uvicorn and
the graceful drain). Importing this package imports none of them.
"""
