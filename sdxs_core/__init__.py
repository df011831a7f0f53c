"""SDXS Studio core: model loading, the one-step engine, control extraction and streaming."""

from .engine import GenerationOutput, OneStepEngine, StageTimings
from .errors import (IncompatibleWeightsError, ModelNotFoundError, ModelUnavailableError, NotAPipelineError,
                     PromptTruncatedWarning, SDXSError)
from .loading import load_engine
from .presets import PRESETS

__all__ = ["GenerationOutput", "IncompatibleWeightsError", "ModelNotFoundError", "ModelUnavailableError",
           "NotAPipelineError", "OneStepEngine", "PRESETS", "PromptTruncatedWarning", "SDXSError",
           "StageTimings", "load_engine"]
