"""`python -m llmkit ...` and `accelerate launch -m llmkit ...`."""

import sys

from llmkit.cli import main

sys.exit(main())
