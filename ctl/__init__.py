"""percalectl, the calicoctl-like command line."""

from importlib import metadata

# The installed distribution's version: one number for percalectl, reports and the agent.
__version__ = metadata.version("percale")
