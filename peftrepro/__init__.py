"""peftrepro: reproducible, verifiable comparisons of parameter-efficient fine-tuning methods."""

__version__ = "0.1.0"
