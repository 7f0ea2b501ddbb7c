"""Errors radsim raises on bad input: messages name the file or option, the field and what is allowed."""


class ConfigError(ValueError):
    """A configuration file or option is invalid; the message says where and what is allowed."""
