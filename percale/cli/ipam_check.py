"""percalectl ipam check / release (being written)."""

from percale.cli.ipam_app import ipam_app  # noqa: F401
