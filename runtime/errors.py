"""Exceptions raised by slimrt. All derive from ValueError so callers may catch either."""


class InvalidModelError(ValueError):
    """The bytes are not a valid .slim model; the message names the offending item."""


class ProfileError(ValueError):
    """An unknown profile name or index, or a multiplier outside the model's range."""


class NonFiniteInputError(ValueError):
    """An input holds NaN or infinity and the run was asked to check (``check_finite=True``)."""
