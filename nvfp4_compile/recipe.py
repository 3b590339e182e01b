"""The NVFP4 training recipe for one linear layer, ``Y = X @ W^T`` (NUMERICS.md §7).

=========  ===================  =================================  ==========================
GEMM       reduction dim        operand A                          operand B (as B^T, K-major)
=========  ===================  =================================  ==========================
fprop      in features          X: 1x16, RNE                       W: 16x16 (2D), RNE
dgrad      out features         dY: 1x16, SR                       W^T: the same 2D W, transposed
wgrad      tokens               dY^T: RHT16, 1x16, SR              X^T: RHT16, 1x16, RNE
=========  ===================  =================================  ==========================

SR is never applied to weights or activations; RHT only to Wgrad inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("nvfp4", "mxfp4", "bf16")
ROLES = ("fprop", "dgrad", "wgrad")
BLOCK_SIZE = {"nvfp4": 16, "mxfp4": 32}


@dataclass(frozen=True)
class Recipe:
    """Which parts of the recipe are on. ``format="bf16"`` quantizes nothing."""

    format: str = "nvfp4"
    rht: bool = True
    stochastic_rounding: bool = True
    weight_2d: bool = True

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"recipe format must be one of {FORMATS}, got {self.format!r}")
        for name in ("rht", "stochastic_rounding", "weight_2d"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"recipe {name} must be a bool, got {getattr(self, name)!r}")

    @property
    def block(self) -> int:
        return BLOCK_SIZE[self.format]


@dataclass(frozen=True)
class OperandTreatment:
    """How one GEMM operand is quantized: ``block_rows`` is 1 (1D) or the block size (2D)."""

    block_rows: int
    rounding: str  # "rne" | "sr"
    rht: bool

    def describe(self, block: int) -> str:
        parts = [f"{self.block_rows}x{block}" if self.block_rows > 1 else f"1x{block}",
                 self.rounding.upper()]
        if self.rht:
            parts.insert(0, "RHT")
        return " ".join(parts)


def treatments(recipe: Recipe, role: str, gradient_is_a: bool = True) -> tuple[OperandTreatment, OperandTreatment]:
    """(A, B) treatments for a GEMM role. For wgrad, ``gradient_is_a`` says which operand is dY."""
    sr = "sr" if recipe.stochastic_rounding else "rne"
    weight_rows = recipe.block if recipe.weight_2d else 1
    if role == "fprop":
        return OperandTreatment(1, "rne", False), OperandTreatment(weight_rows, "rne", False)
    if role == "dgrad":
        return OperandTreatment(1, sr, False), OperandTreatment(weight_rows, "rne", False)
    if role == "wgrad":
        grad, act = OperandTreatment(1, sr, recipe.rht), OperandTreatment(1, "rne", recipe.rht)
        return (grad, act) if gradient_is_a else (act, grad)
    raise ValueError(f"unknown GEMM role {role!r}")
