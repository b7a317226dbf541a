"""Corpus files: human-readable XML dumps now; token streams, bins and index with the tokenizer."""
from .xmldump import dump_samples_xml

__all__ = ["dump_samples_xml"]
