from .definitions import defs  # noqa: F401
