"""An OpenAI-compatible server with continuous batching (`keras-gemma serve`).

`Scheduler` (scheduler.py) owns one `DecodeBatch` in a thread and admits
requests into free rows between decode steps; `build_app` (app.py) is the
Starlette app of the OpenAI routes; `protocol.py` checks request fields and
builds OpenAI's response, chunk and error objects. Needs the `serve` extra
(starlette, uvicorn).
"""

from keras_gemma.serving.app import build_app
from keras_gemma.serving.scheduler import Job
from keras_gemma.serving.scheduler import Scheduler

__all__ = ["Job", "Scheduler", "build_app"]
