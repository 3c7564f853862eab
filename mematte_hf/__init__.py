"""MEMatte for Hugging Face: `import mematte_hf` registers the "mematte" model type with the Auto classes."""

__version__ = "0.1.0"
