"""percalectl ipam show / configure (being written)."""

from percale.cli.ipam_app import ipam_app  # noqa: F401
