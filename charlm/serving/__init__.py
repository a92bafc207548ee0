"""`charlm serve`: an OpenAI-compatible completions server with continuous batching.

`engine` is the batching scheduler (plain Python and torch); `protocol` turns request bodies into
its stream specs; `app` is the ASGI app (Starlette); `server` runs it on uvicorn. Only `engine`
and `protocol` import nothing from the web stack.
"""
