"""`keras-gemma serve`: an OpenAI-compatible HTTP server (needs the `serve` extra).

The model loads first; then uvicorn listens while the scheduler compiles its
programs (`/health` answers 503 until they are warm, 200 after) and the URL
is printed once requests can be served.
"""

import threading

from keras_gemma.commands.common import CommandError
from keras_gemma.commands.common import say
from keras_gemma.commands.options import load_causal_lm


def run(args):
    try:
        import uvicorn

        from keras_gemma.serving import Scheduler
        from keras_gemma.serving import build_app
    except ImportError as error:
        raise CommandError(
            f"`keras-gemma serve` needs the serve extra ({error}): pip install starlette "
            "uvicorn (or, in a keras_gemma checkout: pip install '.[serve]')"
        ) from None
    lm = load_causal_lm(args, sequence_length=args.context)
    scheduler = Scheduler(lm, max_batch=args.max_batch, context=args.context)
    model_name = args.model_name or args.preset
    config = uvicorn.Config(
        build_app(scheduler, model_name), host=args.host, port=args.port, log_level="warning"
    )
    server = uvicorn.Server(config)
    failures = []

    def warm(port):
        try:
            sizes = ", ".join(str(size) for size in scheduler.sizes)
            say(f"Compiling for batches of {sizes} rows, {scheduler.capacity} slots each...")
            scheduler.start()
        except Exception as error:  # Reported by `run` once uvicorn has stopped.
            failures.append(error)
            server.should_exit = True
            return
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"Serving {model_name} at http://{host}:{port}/v1", flush=True)

    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        if server.should_exit:  # The port could not be bound; uvicorn said why.
            return
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else args.port
        threading.Thread(target=warm, args=(port,), daemon=True).start()

    server.startup = startup
    try:
        server.run()
    finally:
        scheduler.stop()
    if failures:
        raise failures[0]
    if not server.started:
        raise CommandError(f"could not listen on {args.host}:{args.port}")
    return 0
