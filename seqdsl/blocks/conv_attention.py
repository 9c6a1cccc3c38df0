"""Block kinds: conv_attention (see seqdsl/blocks/__init__.py)."""
