"""Training: the collator, the model set-up of each VTimeLLM stage, and their arguments."""

from .collator import IGNORE_INDEX, PLAIN_CHAT_TEMPLATE, VTimeDataCollator, add_lengths

__all__ = ["IGNORE_INDEX", "PLAIN_CHAT_TEMPLATE", "VTimeDataCollator", "add_lengths"]
