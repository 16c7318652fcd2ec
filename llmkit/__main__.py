"""`python -m llmkit ...` and `accelerate launch -m llmkit ...`."""

import sys

from llmkit.cli import main

if __name__ == "__main__":
    sys.exit(main())
