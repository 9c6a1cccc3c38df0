"""Block kinds a stack can use. Each module here registers its kinds with ``register_block``.

The torch modules live in sibling ``*_torch.py`` files that are imported only when a stack is built,
so checking a stack (``seqdsl check``) never imports torch.

- builtin: cell(...), attention, mlp, swiglu, shortconv
- conv_attention: long convolutions and attention variants of the survey's blocks (Hyena, MEGA, GAU/FLASH)
- hybrid: blocks of the survey's hybrid models (mixture of experts, shared blocks, xLSTM and RWKV blocks)
- segment: segment-level recurrence (Transformer-XL, RMT, Infini-attention, Block-Recurrent, TLB, ARN, RAN)
"""

from seqdsl.blocks import builtin, conv_attention, hybrid, segment  # noqa: F401
