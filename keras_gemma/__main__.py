"""`python -m keras_gemma ...`: the `keras-gemma` command line."""

import sys

from keras_gemma.cli import main

if __name__ == "__main__":
    sys.exit(main())
