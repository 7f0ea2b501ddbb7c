"""Errors radsim raises on bad input: each message names the file or option, the field and what was allowed."""


class ConfigError(ValueError):
    """A configuration file or option is invalid; the message says where and what is allowed."""
