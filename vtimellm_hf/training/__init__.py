"""Training: the collator, the model set-up of each VTimeLLM stage, and their arguments."""

from ..model import PLAIN_CHAT_TEMPLATE
from .collator import IGNORE_INDEX, VTimeDataCollator, add_lengths

__all__ = ["IGNORE_INDEX", "PLAIN_CHAT_TEMPLATE", "VTimeDataCollator", "add_lengths"]
