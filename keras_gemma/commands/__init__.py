"""The `keras-gemma` subcommands, one module each, with a `run(args)` function.

`keras_gemma.cli` parses the command line, sets the backend and only then
imports the one module the command names, so this package re-exports nothing
(importing it must not import Keras). `common` (errors and status lines) is
free of Keras; `options` turns the shared model and sampling options into a
`GemmaCausalLM` and a sampler.
"""
