"""lm-eval task definitions for llmkit's own Spanish tasks (YAML files + ``utils.py``)."""
