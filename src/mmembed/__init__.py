"""mmembed: multimodal LLMs as universal embedding models (E5-V, UniME, MM-GEM)."""

__version__ = "0.1.0"
