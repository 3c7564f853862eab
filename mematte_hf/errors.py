"""Exceptions that carry a message meant for the user: what went wrong and what to do about it."""


class MEMatteError(Exception):
    """Base class for every error this package raises on purpose."""


class InputError(MEMatteError, ValueError):
    """An image, trimap, click or option the user gave cannot be used as it is."""


class CheckpointError(MEMatteError, ValueError):
    """A checkpoint file or folder is not a MEMatte checkpoint of the expected shape."""


class HubError(MEMatteError, RuntimeError):
    """The Hugging Face Hub could not be reached or refused a request."""
