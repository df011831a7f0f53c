"""Errors users see. Each names the bad value and says what to do next, so the CLI and the app
can show the message as-is instead of a stack trace."""


class SDXSError(Exception):
    """Base class: anything raised on purpose by sdxs_core."""


class ModelNotFoundError(SDXSError, FileNotFoundError):
    """A model path or name that points at nothing."""


class NotAPipelineError(SDXSError, ValueError):
    """A folder that exists but is not the kind of model folder expected."""


class ModelUnavailableError(SDXSError, RuntimeError):
    """A hub model that is neither cached locally nor reachable (offline)."""


class IncompatibleWeightsError(SDXSError, ValueError):
    """A ControlNet or LoRA made for a different base model."""


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than the text encoder's window (77 tokens for CLIP) was cut."""
