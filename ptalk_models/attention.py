"""Multi-head attention on packed ``[B, L, H·d]`` tensors, shared by IdentityNet's face term and AnimateNet's
self- and three-way attention."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head scaled dot-product attention (PyTorch SDPA, scale ``1/√d``) on ``[B, L, H·d]`` tensors →
    ``[B, Lq, H·d]``; ``q`` ``[B, Lq, H·d]``, ``k``/``v`` ``[B, Lk, H·d]``, all one dtype; ``heads`` heads of
    width d = (H·d) / heads."""
    b, lq, inner = q.shape
    d = inner // heads
    q, k, v = (t.reshape(t.shape[0], -1, heads, d).transpose(1, 2) for t in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, lq, inner)
