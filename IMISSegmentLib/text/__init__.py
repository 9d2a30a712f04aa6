"""Text prompts: structure names resolved offline to the categories the 2D network was trained on."""
from .vocabulary import NO_TEXT, VOCABULARY_FILE, Category, TextCode, Vocabulary, load_bundle_vocabulary

__all__ = ["NO_TEXT", "VOCABULARY_FILE", "Category", "TextCode", "Vocabulary", "load_bundle_vocabulary"]
