import pytest
import torch

import nvfp4_compile as nc
from nvfp4_compile.hadamard import DEFAULT_RHT_SIGNS, rht_matrix


def test_rht_matrix_is_orthogonal_and_signed_sylvester():
    h = rht_matrix()
    assert torch.equal(h @ h.t(), torch.eye(16, dtype=torch.float64))
    assert torch.equal(h.abs(), torch.full((16, 16), 0.25, dtype=torch.float64))
    # Row i is s_i times row i of the Sylvester matrix, whose first column is all ones.
    assert torch.equal(h[:, 0] * 4, torch.tensor(DEFAULT_RHT_SIGNS, dtype=torch.float64))
    custom = rht_matrix([1] * 16)
    assert torch.equal(custom, custom.t())  # the plain Sylvester matrix is symmetric


def test_rht_transforms_each_run_of_sixteen_and_preserves_norms():
    x = torch.randn(8, 64, dtype=torch.float64)
    y = nc.rht(x)
    expected = (x.reshape(-1, 16) @ rht_matrix()).reshape(8, 64)
    assert torch.allclose(y, expected, rtol=0, atol=1e-15)
    assert torch.allclose(y.reshape(-1, 16).norm(dim=1), x.reshape(-1, 16).norm(dim=1))
    back = (y.reshape(-1, 16) @ rht_matrix().t()).reshape(8, 64)
    assert torch.allclose(back, x, rtol=0, atol=1e-14)


def test_rht_keeps_dtype_and_rounds_once():
    x = torch.randn(4, 32).to(torch.bfloat16)
    y = nc.rht(x)
    assert y.dtype == torch.bfloat16
    exact = (x.double().reshape(-1, 16) @ rht_matrix()).reshape(4, 32)
    assert torch.equal(y, exact.to(torch.bfloat16))


def test_rht_cancels_in_a_product():
    a, b = torch.randn(8, 64, dtype=torch.float64), torch.randn(5, 64, dtype=torch.float64)
    assert torch.allclose(nc.rht(a) @ nc.rht(b).t(), a @ b.t(), atol=1e-12)


def test_rht_rejects_bad_signs_and_shapes():
    with pytest.raises(ValueError, match="sign vector"):
        nc.rht(torch.ones(2, 16), sign=[1, -1])
    with pytest.raises(ValueError, match="sign vector"):
        nc.rht(torch.ones(2, 16), sign=[2] * 16)
    with pytest.raises(ValueError, match="multiple of 16"):
        nc.rht(torch.ones(2, 24))


def outlier_heavy_wgrad_operands(kind, tokens=1024, d_out=64, d_in=96, seed=0):
    """Wgrad operands dY^T [d_out, tokens] and X^T [d_in, tokens], quantized along tokens."""
    gen = torch.Generator().manual_seed(seed)
    x, dy = torch.randn(tokens, d_in, generator=gen), torch.randn(tokens, d_out, generator=gen)
    if kind == "student_t":
        t = torch.distributions.StudentT(3.0)
        x, dy = t.sample((tokens, d_in)), t.sample((tokens, d_out))
    elif kind == "outlier_tokens":  # a few tokens carry activations 50x the rest
        x[torch.randperm(tokens, generator=gen)[: tokens // 32]] *= 50
        dy[torch.randperm(tokens, generator=gen)[: tokens // 32]] *= 30
    elif kind == "massive_outliers":  # isolated values 1000x the rest set the tensor amax
        x[torch.rand(tokens, d_in, generator=gen) < 1e-3] *= 1000
        dy[torch.rand(tokens, d_out, generator=gen) < 1e-3] *= 1000
    return dy.t().contiguous().to(torch.bfloat16), x.t().contiguous().to(torch.bfloat16)


def wgrad_relative_error(a, b, use_rht):
    exact = a.double() @ b.double().t()
    c = nc.nvfp4_mm(nc.quantize(a, rht=use_rht), nc.quantize(b, rht=use_rht), out_dtype=torch.float32)
    return ((c.double() - exact).norm() / exact.norm()).item()


@pytest.mark.parametrize("kind", ["gaussian", "student_t", "outlier_tokens", "massive_outliers"])
def test_rht_wgrad_approximates_the_exact_product(kind):
    """RHT on both Wgrad operands cancels in the product: NVFP4 still approximates dY^T X."""
    a, b = outlier_heavy_wgrad_operands(kind)
    assert wgrad_relative_error(a, b, True) < 0.2


def test_rht_is_neutral_on_gaussian_wgrad_operands():
    a, b = outlier_heavy_wgrad_operands("gaussian")
    with_rht, without = wgrad_relative_error(a, b, True), wgrad_relative_error(a, b, False)
    assert abs(with_rht - without) <= 0.05 * without


@pytest.mark.xfail(strict=True, reason=(
    "measured, seed 0, 1024 tokens: relative Wgrad error with/without RHT is 0.141/0.128 "
    "(Student-t), 0.130/0.080 (outlier tokens), 0.072/0.014 (massive outliers). FP4's "
    "log-spaced grid represents a block's spike almost exactly; the 16-point RHT spreads it "
    "over the block and with it the quantization error. Single-GEMM error does not show the "
    "benefit the paper reports in training; the convergence study measures that instead."))
@pytest.mark.parametrize("kind", ["student_t", "outlier_tokens", "massive_outliers"])
def test_rht_wgrad_error_is_no_worse_than_without_on_outlier_heavy_inputs(kind):
    a, b = outlier_heavy_wgrad_operands(kind)
    assert wgrad_relative_error(a, b, True) <= wgrad_relative_error(a, b, False)
