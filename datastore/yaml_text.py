"""A YAML error in one line, for messages that name a configuration file: PyYAML's own text takes
up to four lines and names the stream again. Its own module so that the kubeconfig reader uses it
without importing the etcd client (grpc) that datastore.config needs."""

from __future__ import annotations

import yaml


def yaml_problem(err: yaml.YAMLError) -> str:
    """What is wrong and where."""
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is not None and problem:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    if isinstance(err, yaml.reader.ReaderError):  # not UTF-8, or a control character
        return f"unacceptable character at position {err.position}: {err.reason}"
    return " ".join(str(err).split())
