"""The NVFP4 training recipe for one linear layer, ``Y = X @ W^T`` (NUMERICS.md §7).

=========  ===================  =================================  ==========================
GEMM       reduction dim        operand A                          operand B (as B^T, K-major)
=========  ===================  =================================  ==========================
fprop      in features          X: 1x16, RNE                       W: 16x16 (2D), RNE
dgrad      out features         dY: 1x16, SR                       W^T: the same 2D W, transposed
wgrad      tokens               dY^T: RHT16, 1x16, SR              X^T: RHT16, 1x16, RNE
=========  ===================  =================================  ==========================

That is the default (the paper's recipe): SR on gradients only, RHT on Wgrad inputs only.
A policy may change both per module (``nvfp4_compile.policy``).
"""

from __future__ import annotations

from dataclasses import dataclass

FORMATS = ("nvfp4", "mxfp4", "bf16")
ROLES = ("fprop", "dgrad", "wgrad")
OPERAND_KINDS = ("activation", "weight", "gradient")
BLOCK_SIZE = {"nvfp4": 16, "mxfp4": 32}


def _choice_tuple(name, value, choices, when_true):
    if isinstance(value, bool):
        return when_true if value else ()
    if isinstance(value, str):
        value = (value,)
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise TypeError(f"recipe {name} must be a bool or a list of {list(choices)}, got {value!r}")
    bad = sorted(set(value) - set(choices))
    if bad:
        raise ValueError(f"recipe {name}: unknown value(s) {bad}; expected a subset of {list(choices)}")
    return tuple(c for c in choices if c in value)


@dataclass(frozen=True)
class Recipe:
    """Which parts of the recipe are on. ``format="bf16"`` quantizes nothing.

    ``rht``: the GEMMs whose operands get the 16-point RHT (``True`` means the paper's
    ``["wgrad"]``). ``stochastic_rounding``: the operand kinds rounded stochastically
    (``True`` means ``["gradient"]``). Both are stored as tuples.
    """

    format: str = "nvfp4"
    rht: tuple = ("wgrad",)
    stochastic_rounding: tuple = ("gradient",)
    weight_2d: bool = True

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"recipe format must be one of {list(FORMATS)}, got {self.format!r}")
        if not isinstance(self.weight_2d, bool):
            raise TypeError(f"recipe weight_2d must be a bool, got {self.weight_2d!r}")
        object.__setattr__(self, "rht", _choice_tuple("rht", self.rht, ROLES, ("wgrad",)))
        object.__setattr__(self, "stochastic_rounding", _choice_tuple(
            "stochastic_rounding", self.stochastic_rounding, OPERAND_KINDS, ("gradient",)))

    @property
    def block(self) -> int:
        return BLOCK_SIZE.get(self.format, 16)


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


def treatment(recipe: Recipe, role: str, kind: str) -> OperandTreatment:
    """How an operand of ``kind`` (activation, weight, gradient) is quantized in a ``role`` GEMM."""
    if role not in ROLES:
        raise ValueError(f"unknown GEMM role {role!r}")
    rounding = "sr" if kind in recipe.stochastic_rounding else "rne"
    block_rows = recipe.block if kind == "weight" and recipe.weight_2d else 1
    return OperandTreatment(block_rows, rounding, role in recipe.rht)
