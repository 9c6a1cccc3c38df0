"""Block kinds a stack can use. Each module here registers its kinds with ``register_block``.

The torch modules live in sibling ``*_torch.py`` files that are imported only when a stack is built,
so checking a stack (``seqdsl check``) never imports torch.
"""

from seqdsl.blocks import builtin  # noqa: F401
