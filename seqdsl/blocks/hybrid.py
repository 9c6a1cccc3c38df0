"""Block kinds: hybrid (see seqdsl/blocks/__init__.py)."""
