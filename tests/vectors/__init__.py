"""Annotated test vectors for the framing and parsing stages, hand-written and cut from real captures."""
