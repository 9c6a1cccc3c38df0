"""Block kinds: segment (see seqdsl/blocks/__init__.py)."""
