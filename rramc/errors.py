"""The errors rramc raises on purpose.

Every error a user can cause derives from :class:`RramcError`; its message names the file, field,
layer or pass at fault and what is allowed, so the CLI can print it as is, without a traceback.
"""

from __future__ import annotations


class RramcError(Exception):
    """Base class of every error rramc reports to a user."""


class TargetError(RramcError):
    """A target (device) spec is missing, malformed or out of range."""


class FrontendError(RramcError):
    """A model cannot be loaded or imported into rramc's IR."""


class VerifyError(RramcError):
    """The IR broke an invariant; the message names the node (and the pass, when run by one)."""


class PassError(RramcError):
    """A pass or pipeline is unknown, badly configured or failed."""


class TilingError(RramcError):
    """A layer cannot be tiled onto the target's crossbar arrays."""


class ExecutableFormatError(RramcError):
    """An executable file is corrupt, truncated, of another format or of a newer version."""


class DatasetError(RramcError):
    """A data set is missing, corrupt, or does not fit the model."""


class RuntimeSimulationError(RramcError):
    """The runtime cannot execute a graph (for instance an op that was never lowered)."""


class RramcWarning(UserWarning):
    """Base class of rramc's warnings: a result the user should not trust without a look."""


class ClippedInputWarning(RramcWarning):
    """A crossbar layer clipped inputs outside its calibrated range (or negative inputs it reads as unsigned)."""
