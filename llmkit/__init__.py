"""llmkit: the whole life of a Spanish language model on the Hugging Face stack."""

__version__ = "0.1.0"
