"""Control plane: the policy language. YAML files -> a typed, validated `Policy` -> the engine's IR.

`load(paths, pki_dir=None)` is the one entry point; it raises `PolicyError` with every issue found.
The language is described in docs/policy.md; the IR in docs/engine.md, section 3.
"""

from .errors import Issue, PolicyError
from .loader import load
from .model import Policy, json_schema

__all__ = ["Issue", "Policy", "PolicyError", "json_schema", "load"]
