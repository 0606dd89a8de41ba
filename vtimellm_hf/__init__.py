"""vtimellm-hf: VTimeLLM, the video LLM that tells when things happen, on the Hugging Face stack."""

from .model import *  # noqa: F403
from .model import __all__ as _model_all

__version__ = "0.1.0"
__all__ = list(_model_all)
