"""Errors users see. Each names the bad value and says what to do next, so the CLI and the app
can show the message as-is instead of a stack trace."""

import math
from dataclasses import dataclass

import numpy as np


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


class CorruptWeightsError(SDXSError, ValueError):
    """Weights that read but cannot be used: NaN or inf values (a diverged training run)."""


class PromptTruncatedWarning(UserWarning):
    """A prompt longer than the text encoder's window (77 tokens for CLIP) was cut."""


class InvalidInputError(SDXSError, ValueError):
    """A user-supplied value out of its range; ``field`` is the name the user knows it by (the app's
    label, which the CLI's flag also maps to), so a toast or a one-line CLI error can say which."""

    def __init__(self, field: str, message: str):
        self.field = field
        super().__init__(f"{field}: {message}")


class NonFiniteOutputError(SDXSError, RuntimeError):
    """The network produced NaN or inf: refused, since it would decode to a silent black image."""


@dataclass(frozen=True)
class Range:
    """An inclusive range for one user-facing number."""

    field: str
    low: float
    high: float
    integer: bool = False

    def check(self, value, high: float | None = None, text: bool = False):
        """``value`` as an int or float inside the range (``high`` narrows it, e.g. steps on a
        one-step model), else ``InvalidInputError`` naming the field and the range. ``text``: also
        parse strings (form fields and JSON from a client; Python callers must pass numbers)."""
        high = self.high if high is None else high
        span = f"[{_show(self.low)}, {_show(high)}]"
        if self.integer:
            if isinstance(value, float) and math.isfinite(value) and value.is_integer():
                value = int(value)  # JSON and Gradio numbers: 3.0 is the integer 3
            if text and isinstance(value, str):
                try:
                    value = int(value.strip())
                except ValueError:
                    raise InvalidInputError(self.field, f"must be an integer in {span}, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidInputError(self.field, f"must be an integer in {span}, got {value!r}")
            value = int(value)
        else:
            if text and isinstance(value, str):
                try:
                    value = float(value.strip())
                except ValueError:
                    raise InvalidInputError(self.field, f"must be a finite number in {span}, got {value!r}") from None
            if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
                    or not math.isfinite(value):
                raise InvalidInputError(self.field, f"must be a finite number in {span}, got {value!r}")
            value = float(value)
        if value < self.low:
            raise InvalidInputError(self.field, f"at least {_show(self.low)} (allowed {span}), got {_show(value)}")
        if value > high:
            raise InvalidInputError(self.field, f"at most {_show(high)} (allowed {span}), got {_show(value)}")
        return value


def _show(x) -> str:
    if isinstance(x, float) and x.is_integer() and abs(x) < 2**53:
        x = int(x)
    return "2**63 - 1" if x == 2**63 - 1 else f"{x:g}" if isinstance(x, float) else str(x)


ONE_STEP_MAX_STEPS = 4  # a one-step model at a few steps still works; at hundreds it is minutes of mush

# The one table of user-facing ranges: the engine, the CLI, the app and the live socket all check
# through it, so a value is refused with the same words wherever it comes in.
RANGES: dict[str, Range] = {r.field: r for r in [
    Range("Seed", 0, 2**63 - 1, integer=True),  # torch's generators take a signed 64-bit seed
    Range("Images", 1, 16, integer=True),
    Range("Steps", 1, 1000, integer=True),
    Range("Guidance", 0, 30),
    Range("Control strength", 0, 2),
    Range("LoRA scale", -2, 2),
    Range("Strength", 0, 1),
    Range("Height", 8, 4096, integer=True),
    Range("Width", 8, 4096, integer=True),
]}


def check(field: str, value, high: float | None = None, text: bool = False):
    """``RANGES[field].check(value, high, text)``."""
    return RANGES[field].check(value, high, text)
