import pytest
import torch

import nvfp4_compile as nc
from nvfp4_compile.formats import unpack_nibbles

DRAWS = 2000


def sr_draws(x, generator, block=(1, 16)):
    """DRAWS independent SR quantizations of x in one call: stacking copies along rows changes
    neither the tensor amax nor any block (2D: whole 16-row tiles are repeated)."""
    q = nc.quantize(x.repeat(DRAWS, 1), block=block, rounding="sr", generator=generator)
    return nc.dequantize(q).reshape(DRAWS, *x.shape)


@pytest.mark.parametrize("block", [(1, 16), (16, 16)])
def test_sr_is_unbiased_within_a_statistical_bound(block):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 64, generator=gen) * torch.logspace(-2, 2, 64)
    draws = sr_draws(x, gen, block)
    # Every draw is one of the two grid neighbours around x: per element the outcome is
    # Bernoulli with spread d = hi - lo, so the standard deviation of the mean over DRAWS
    # draws is at most d / (2 sqrt(DRAWS)).
    q = nc.quantize(x, block=block)
    scale = q.scales.to(torch.float32).repeat_interleave(16, 1) * q.global_scale
    saturated = x.abs() > 6 * scale  # SR saturates at 6: not unbiased there, by design
    spread = 2 * scale  # the widest grid step (4 -> 6), times the scale
    mean = draws.mean(0)
    bound = 6 * spread / (2 * DRAWS ** 0.5)  # 6 sigma, for a union over 1024 elements
    ok = (mean - x).abs() <= bound
    assert ok[~saturated].all()
    # Only a block's largest elements can exceed 6 (when its E4M3 scale rounded down).
    assert saturated.float().mean() < 0.08
    # The same check catches round-to-nearest's bias: it is no vacuous bound.
    rne = nc.dequantize(q)
    assert ((rne - x).abs() > bound)[~saturated].float().mean() > 0.3


def test_each_draw_is_a_grid_neighbour():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(32, 64, generator=gen)
    q_rne = nc.quantize(x)
    scale = (q_rne.scales.to(torch.float32).repeat_interleave(16, 1) * q_rne.global_scale)
    for _ in range(5):
        y = nc.dequantize(nc.quantize(x, rounding="sr", generator=gen))
        steps = torch.where((x / scale).abs() < 2, 0.5, torch.where((x / scale).abs() < 4, 1.0, 2.0))
        assert ((y - x).abs() <= steps * scale * 1.0001).all()


def test_sr_is_reproducible_with_a_seeded_generator_and_differs_between_draws():
    x = torch.randn(64, 128, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    g1, g2 = torch.Generator().manual_seed(42), torch.Generator().manual_seed(42)
    a = nc.quantize(x, rounding="sr", generator=g1)
    b = nc.quantize(x, rounding="sr", generator=g2)
    assert torch.equal(a.codes, b.codes)
    c = nc.quantize(x, rounding="sr", generator=g1)
    differ = (unpack_nibbles(a.codes) != unpack_nibbles(c.codes)).float().mean()
    assert differ > 0.1
    # The scales do not depend on the rounding.
    assert torch.equal(a.scales.view(torch.uint8), nc.quantize(x).scales.view(torch.uint8))


def test_sr_uses_the_default_generator_under_manual_seed():
    x = torch.randn(32, 64)
    torch.manual_seed(7)
    a = nc.quantize(x, rounding="sr")
    torch.manual_seed(7)
    b = nc.quantize(x, rounding="sr")
    c = nc.quantize(x, rounding="sr")
    assert torch.equal(a.codes, b.codes) and not torch.equal(b.codes, c.codes)


def test_sr_with_rht_is_unbiased_on_the_transformed_values():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(16, 64, generator=gen)
    draws = nc.dequantize(nc.quantize(x.repeat(DRAWS, 1), rounding="sr", rht=True, generator=gen))
    target = nc.rht(x).to(torch.bfloat16).float()
    q = nc.quantize(x, rht=True)
    scale = q.scales.to(torch.float32).repeat_interleave(16, 1) * q.global_scale
    bound = 6 * 2 * scale / (2 * DRAWS ** 0.5)
    inside = target.abs() <= 6 * scale
    assert ((draws.reshape(DRAWS, 16, 64).mean(0) - target).abs() <= bound)[inside].all()
