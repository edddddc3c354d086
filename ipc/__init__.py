"""Local inter-process plumbing shared by percale's processes: the root-only unix-socket server.

The lowest layer beside api/: it imports nothing of percale.
"""
