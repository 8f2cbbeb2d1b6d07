"""Errors the CLI turns into one clear line for the user."""


class DistillscopeError(Exception):
    """A user-facing error: the message names what is wrong and how to fix it."""


class UnknownNameError(DistillscopeError, ValueError):
    """A name (model, method, dataset, config key) that is not registered."""
