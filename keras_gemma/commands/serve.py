"""`keras-gemma serve`: an OpenAI-compatible HTTP server (needs the `serve` extra).

The model loads first; then uvicorn listens (in a thread of its own) while
the scheduler compiles its programs (`/health` answers 503 until they are
warm, 200 after), the URL is printed once requests can be served, and the
scheduling loop runs in the main thread until Ctrl-C or SIGTERM.
"""

import signal
import threading
import time

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
    # HTTP in a thread; the model's programs run in this one, which loaded it
    # (PyTorch's small ops run 4x slower in another thread: `Scheduler.start`).
    http = threading.Thread(target=server.run, name="keras-gemma-http", daemon=True)
    http.start()
    while not server.started and http.is_alive():
        time.sleep(0.05)
    if not server.started:  # The port could not be bound; uvicorn said why.
        http.join()
        raise CommandError(f"could not listen on {args.host}:{args.port}")
    port = server.servers[0].sockets[0].getsockname()[1] if server.servers else args.port

    def finish(*_):
        scheduler.stop()

    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, finish) if main else None

    def stop_when_http_ends():  # uvicorn exits on its own (e.g. a fatal error).
        http.join()
        scheduler.stop()

    threading.Thread(target=stop_when_http_ends, daemon=True).start()
    try:
        sizes = ", ".join(str(size) for size in scheduler.sizes)
        say(f"Compiling for batches of {sizes} rows, {scheduler.capacity} slots each...")
        scheduler.warm()
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"Serving {model_name} at http://{host}:{port}/v1", flush=True)
        scheduler.run()
    except KeyboardInterrupt:
        pass
    finally:
        if main:
            signal.signal(signal.SIGTERM, previous)
        scheduler.stop()
        server.should_exit = True
        http.join(30)
    return 0
