"""Transposed convolution as zero insertion + an ordinary convolution (Dumoulin & Visin 2016, sec. 4.6).

``conv_transpose(x, W, stride s, padding p, output_padding q, dilation d, groups g)`` equals a
stride-1 convolution, with dilation ``d``, of ``x`` with ``s - 1`` zeros inserted between
neighbouring samples and ``d (k - 1) - p`` zeros added before / ``d (k - 1) - p + q`` after each
spatial dim, using the kernel flipped in space with input and output channels swapped per group:
``W'[g Cog + o, i, ky, kx] = W[g Cig + i, o, k - 1 - ky, k - 1 - kx]`` (paper's relationship 14 with
``p' = k - p - 1`` and ``s - 1`` inserted zeros, generalized to dilation and groups).

:func:`rewrite_conv_transposes` applies this to the traced graph, so every later pass (BN folding,
equalization, weight quantization, bias correction) and the proven integer conv kernels see an
``nn.Conv2d``/``nn.Conv1d``; :func:`zero_insert` is the float op of the inserted node (a zero-point
``Pad`` with interior padding in the integer IR).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.fx import GraphModule

__all__ = ["zero_insert", "rewrite_conv_transposes", "conv_transpose_problem"]


def zero_insert(x: torch.Tensor, stride: tuple[int, int], padding: tuple[int, int, int, int]) -> torch.Tensor:
    """``(N, C, H, W)`` (or ``(N, C, L)`` with ``H = 1``): ``stride - 1`` zeros between samples, then
    ``padding = (top, left, bottom, right)`` zeros at the edges."""
    one_d = x.dim() == 3
    v = x.unsqueeze(2) if one_d else x
    n, c, h, w = v.shape
    sh, sw = stride
    pt, pl, pb, pr = padding
    out = v.new_zeros(n, c, pt + (h - 1) * sh + 1 + pb, pl + (w - 1) * sw + 1 + pr)
    out[:, :, pt:pt + (h - 1) * sh + 1:sh, pl:pl + (w - 1) * sw + 1:sw] = v
    return out.squeeze(2) if one_d else out


def conv_transpose_problem(mod: nn.Module, n_args: int) -> str | None:
    """Why ``mod`` (called with ``n_args`` arguments) cannot be rewritten, or ``None``."""
    if mod.padding_mode != "zeros":
        return f"ConvTranspose with padding_mode={mod.padding_mode!r} (only 'zeros')"
    if n_args != 1:
        return "ConvTranspose called with output_size=; give output_padding in the module instead"
    k = mod.kernel_size
    if any(d * (kk - 1) - p < 0 for d, kk, p in zip(mod.dilation, k, mod.padding)):
        return f"ConvTranspose with padding {mod.padding} larger than dilation * (kernel - 1)"
    return None


def _as_conv(mod: nn.Module) -> tuple[nn.Module, tuple[int, int], tuple[int, int, int, int]]:
    one_d = isinstance(mod, nn.ConvTranspose1d)
    w = mod.weight.detach()
    cin, cog = w.shape[:2]
    g = mod.groups
    k = tuple(w.shape[2:])
    flipped = w.reshape(g, cin // g, cog, *k).transpose(1, 2).reshape(g * cog, cin // g, *k)
    flipped = flipped.flip(dims=tuple(range(2, w.dim())))
    conv_type = nn.Conv1d if one_d else nn.Conv2d
    conv = conv_type(cin, g * cog, k, stride=1, padding=0, dilation=mod.dilation, groups=g,
                     bias=mod.bias is not None).to(dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(flipped)
        if mod.bias is not None:
            conv.bias.copy_(mod.bias.detach())
    before = [d * (kk - 1) - p for d, kk, p in zip(mod.dilation, k, mod.padding)]
    after = [b + q for b, q in zip(before, mod.output_padding)]
    if one_d:
        return conv, (1, mod.stride[0]), (0, before[0], 0, after[0])
    return conv, tuple(mod.stride), (before[0], before[1], after[0], after[1])


def rewrite_conv_transposes(gm: GraphModule) -> GraphModule:
    """Replace every rewritable ``nn.ConvTranspose1d/2d`` call by ``zero_insert`` + a convolution under
    the same module name (others are left for the frontend to report)."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op != "call_module":
            continue
        mod = gm.get_submodule(node.target)
        if not isinstance(mod, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
            continue
        if conv_transpose_problem(mod, len(node.args) + len(node.kwargs)) is not None:
            continue
        conv, stride, padding = _as_conv(mod)
        gm.add_submodule(node.target, conv)
        with gm.graph.inserting_before(node):
            z = gm.graph.call_function(zero_insert, (node.args[0], stride, padding))
        z.meta["stack_trace"] = node.meta.get("stack_trace")
        z.stack_trace = node.stack_trace
        node.args = (z,)
        changed = True
    if changed:
        gm.recompile()
    return gm
