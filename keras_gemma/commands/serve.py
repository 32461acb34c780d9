"""`keras-gemma serve`: an OpenAI-compatible HTTP server (needs the `serve` extra)."""

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
            f'`keras-gemma serve` needs the serve extra ({error}): pip install "keras-gemma[serve]"'
        ) from None
    lm = load_causal_lm(args, sequence_length=args.context)
    say(f"Compiling for {args.max_batch} rows of {args.context} tokens...")
    scheduler = Scheduler(lm, max_batch=args.max_batch, context=args.context).start()
    model_name = args.model_name or args.preset
    app = build_app(scheduler, model_name)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level="warning")
    server = uvicorn.Server(config)
    original_startup = server.startup

    async def startup(sockets=None):
        await original_startup(sockets=sockets)
        host = f"[{args.host}]" if ":" in args.host else args.host
        port = server.servers[0].sockets[0].getsockname()[1] if server.servers else args.port
        print(f"Serving {model_name} at http://{host}:{port}/v1", flush=True)

    server.startup = startup
    try:
        server.run()
    finally:
        scheduler.stop()
    return 0
