"""An eager emulation of the recipe built only from the public numerics, to check the backend.

``emulate(model, ...)`` returns a deep copy whose ``nn.Linear`` layers compute fprop, dgrad
and wgrad exactly as NUMERICS.md §7 says, with ``quantize``/``nvfp4_mm``.
"""

import copy

import torch
import torch.nn as nn

import nvfp4_compile as nc


class _NVFP4Linear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, sr):
        qx = nc.quantize(x)
        qw = nc.quantize(weight, block=(16, 16))
        ctx.save_for_backward(x, weight)
        ctx.qw, ctx.sr, ctx.has_bias = qw, sr, bias is not None
        return nc.nvfp4_mm(qx, qw, out_dtype=x.dtype, bias=bias)

    @staticmethod
    def backward(ctx, dy):
        x, weight = ctx.saved_tensors
        rounding = "sr" if ctx.sr else "rne"
        dx = nc.nvfp4_mm(nc.quantize(dy, rounding=rounding), ctx.qw.t(), out_dtype=dy.dtype)
        dw = nc.nvfp4_mm(nc.quantize(dy.t().contiguous(), rounding=rounding, rht=True),
                         nc.quantize(x.t().contiguous(), rht=True), out_dtype=weight.dtype)
        db = dy.sum(0) if ctx.has_bias else None
        return dx, dw, db, None


class EmulatedLinear(nn.Module):
    def __init__(self, linear: nn.Linear, sr: bool):
        super().__init__()
        self.weight, self.bias, self.sr = linear.weight, linear.bias, sr

    def forward(self, x):
        lead = x.shape[:-1]
        y = _NVFP4Linear.apply(x.reshape(-1, x.shape[-1]), self.weight, self.bias, self.sr)
        return y.reshape(*lead, -1)


def emulate(model: nn.Module, keep=(), sr=False) -> nn.Module:
    """A copy of ``model`` with every ``nn.Linear`` whose path is not in ``keep`` emulated."""
    model = copy.deepcopy(model)
    for name, module in list(model.named_modules()):
        for child_name, child in list(module.named_children()):
            path = f"{name}.{child_name}" if name else child_name
            if isinstance(child, nn.Linear) and path not in keep:
                setattr(module, child_name, EmulatedLinear(child, sr))
    return model
