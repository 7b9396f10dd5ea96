"""Simplex noise against the opensimplex package: noise3, its batched form, octave fields, sampling."""

import numpy as np
import pytest
import torch

from sss_viewer.core import simplex
from sss_viewer.core.config import NoiseConfig
from sss_viewer.core.simplex import noise3, noise3_batch, octave_noise, sample_noise

opensimplex = pytest.importorskip("opensimplex")

SEEDS = [0, 1, -1, 3, 42, -7, 2 ** 31 - 1, 2 ** 62 + 12345, 2 ** 63 - 1, -2 ** 63, 2 ** 64 + 5,
         *np.random.default_rng(7).integers(-2 ** 63, 2 ** 63 - 1, size=4, dtype=np.int64).tolist()]


def reference(seed: int, x, y, z) -> np.ndarray:
    """The package's noise3, point by point (its pure-Python path)."""
    gen = opensimplex.OpenSimplex(seed)
    return np.array([gen.noise3(float(a), float(b), float(c)) for a, b, c in zip(x, y, z)])


def points(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 3) coordinates: small and large, negative, integer lattice points and exact-tie rationals."""
    quarter = n // 4
    return np.concatenate([
        rng.uniform(-40, 40, (quarter, 3)),
        rng.uniform(-1e6, 1e6, (quarter, 3)),
        rng.integers(-300, 300, (quarter, 3)).astype(np.float64),
        rng.integers(-24, 24, (n - 3 * quarter, 3)) / 8.0,      # stretched coordinates often tie exactly
    ])


@pytest.mark.parametrize("seed", SEEDS)
def test_noise3_matches_package(seed):
    p = points(np.random.default_rng(abs(seed) % 1000), 240)
    t = torch.from_numpy(p)
    got = noise3(t[:, 0], t[:, 1], t[:, 2], seed)
    assert got.dtype == torch.float64 and got.shape == (240,)
    np.testing.assert_allclose(got.numpy(), reference(seed, *p.T), rtol=0, atol=1e-9)


def test_noise3_matches_package_on_a_tie_grid():
    # Every combination of quarter steps in a cube: all region boundaries and branch ties of the package.
    axis = torch.arange(-6, 7, dtype=torch.float64) / 4
    x, y, z = (v.reshape(-1) for v in torch.meshgrid(axis, axis, axis, indexing="ij"))
    for seed in (5, -2 ** 40):
        np.testing.assert_allclose(noise3(x, y, z, seed).numpy(), reference(seed, x, y, z), rtol=0, atol=1e-9)


def test_noise3_broadcasts_and_keeps_float32():
    x = torch.linspace(-3, 3, 5, dtype=torch.float32)[:, None]   # (5, 1)
    y = torch.linspace(-2, 9, 4, dtype=torch.float32)            # (4,)
    got = noise3(x, y, 1.5, 11)
    assert got.shape == (5, 4) and got.dtype == torch.float32
    xx, yy = (v.double().reshape(-1) for v in torch.broadcast_tensors(x, y))
    np.testing.assert_allclose(got.reshape(-1).numpy(), reference(11, xx, yy, [1.5] * 20), rtol=0, atol=1e-6)


def test_noise3_over_many_pieces(monkeypatch):
    monkeypatch.setattr(simplex, "_CPU_CHUNK", 37)               # 600 points in 17 pieces
    p = points(np.random.default_rng(3), 600)
    t = torch.from_numpy(p)
    np.testing.assert_allclose(noise3(t[:, 0], t[:, 1], t[:, 2], 99).numpy(), reference(99, *p.T), rtol=0, atol=1e-9)


def test_noise3_batch_over_pieces_and_table_groups(monkeypatch):
    monkeypatch.setattr(simplex, "_CPU_CHUNK", 64)               # 8 tables: pieces of 16 points, 4 tables a pass
    seeds = torch.arange(-3, 5) * 1000003
    x = torch.linspace(-7, 7, 50, dtype=torch.float64)[None]     # (1, 50): shared by the 8 samples
    out = noise3_batch(x, x.flip(1), 0.75, seeds)
    for b, seed in enumerate(seeds.tolist()):
        assert torch.equal(out[b], noise3(x[0], x[0].flip(0), 0.75, seed))
    np.testing.assert_allclose(out[7].numpy(), reference(int(seeds[7]), x[0], x[0].flip(0), [0.75] * 50),
                               rtol=0, atol=1e-9)


def test_noise3_batch_rows_equal_noise3_and_package():
    seeds = torch.tensor([0, -5, 2 ** 62 + 7, 123, 123])
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.uniform(-30, 30, (1, 40)))           # broadcast over the batch
    y = torch.from_numpy(rng.uniform(-30, 30, (5, 40)))
    z = torch.from_numpy(rng.uniform(-30, 30, (5, 1)))
    y[4], z[4] = y[3], z[3]                                        # rows 3 and 4: same seed, same points
    out = noise3_batch(x, y, z, seeds)
    assert out.shape == (5, 40)
    for b, seed in enumerate(seeds.tolist()):
        assert torch.equal(out[b], noise3(x[0], y[b], z[b], seed))
    np.testing.assert_allclose(out[2].numpy(), reference(2 ** 62 + 7, x[0], y[2], z[2].expand(40)), rtol=0, atol=1e-9)
    assert torch.equal(out[3], out[4])


def test_noise3_batch_shared_points_equal_per_sample_points():
    seeds = torch.tensor([4, -4, 2 ** 40])
    rng = np.random.default_rng(2)
    x, y = (torch.from_numpy(rng.uniform(-20, 20, (1, 30))) for _ in range(2))
    shared = noise3_batch(x, y, 3.25, seeds)                      # one geometry, three tables
    apart = noise3_batch(x.expand(3, -1).contiguous(), y, 3.25, seeds)
    assert torch.equal(shared, apart)
    np.testing.assert_allclose(shared[2].numpy(), reference(2 ** 40, x[0], y[0], [3.25] * 30), rtol=0, atol=1e-9)


def test_noise3_batch_needs_one_leading_entry_per_seed():
    with pytest.raises(ValueError, match="leading dimension"):
        noise3_batch(torch.zeros(3, 4), torch.zeros(3, 4), 0.0, torch.tensor([1, 2]))


def test_permutations_match_package_init():
    from opensimplex.internals import _init
    seeds = [0, 3, -1, 2 ** 63 - 1, -2 ** 63, 987654321]
    perm = simplex._permutations(torch.tensor(seeds))
    for row, seed in zip(perm, seeds):
        np.testing.assert_array_equal(row.numpy(), _init(seed)[0])


def hand_built_octaves(seed: int, h: int, w: int, z: float, cfg: NoiseConfig) -> np.ndarray:
    """AnoDDPM's octave sum with the package: sum_k p^k noise3array(col f_k, row f_k, z f_k)."""
    gen = opensimplex.OpenSimplex(seed)
    field = np.zeros((h, w))
    for k in range(cfg.octaves):
        f = cfg.frequency * 2.0 ** k
        field += cfg.persistence ** k * gen.noise3array(np.arange(w) * f, np.arange(h) * f, np.array([z * f]))[0]
    return field


def test_octave_noise_matches_hand_built_sum():
    cfg = NoiseConfig(standardize=False)
    seeds, z = torch.tensor([3, -9]), torch.tensor([10.0, 250.0])
    field = octave_noise((2, 7, 11), seeds, cfg, z=z)
    assert field.shape == (2, 7, 11) and field.dtype == torch.float32
    for b in range(2):
        expected = hand_built_octaves(int(seeds[b]), 7, 11, float(z[b]), cfg)
        np.testing.assert_allclose(field[b].numpy(), expected, rtol=0, atol=1e-6)


def test_octave_noise_same_with_shared_or_per_sample_z():
    cfg, seeds = NoiseConfig(standardize=False), torch.tensor([21, 22])
    shared = octave_noise((2, 9, 13), seeds, cfg, z=40.0)
    apart = octave_noise((2, 9, 13), seeds, cfg, z=torch.tensor([40.0, 41.0]))
    assert torch.equal(shared[0], apart[0]) and not torch.equal(shared[1], apart[1])
    np.testing.assert_allclose(shared[1].numpy(), hand_built_octaves(22, 9, 13, 40.0, cfg), rtol=0, atol=1e-6)


def test_octave_noise_grid_cache_changes_nothing_and_stays_small(monkeypatch):
    """A shared grid is summed directly on first use; from the second on its seed-free operator is built and
    kept (two grids at most). Every result equals the package's."""
    monkeypatch.setattr(simplex, "_GRID_CACHE", simplex._GridCache(grids=2))
    cfg = NoiseConfig(standardize=False)
    grid = (9, 13, 40.0, cfg.octaves, cfg.frequency, cfg.persistence, "cpu")
    at = {z: grid[:2] + (z,) + grid[3:] for z in (40.0, 41.0, 42.0)}
    calls = [  # (shape, seeds, z, the grids kept after the call)
        ((2, 9, 13), torch.tensor([21, 22]), 40.0, []), ((1, 9, 13), torch.tensor([5]), 40.0, [40.0]),
        ((2, 9, 13), torch.tensor([7, 8]), 41.0, [40.0]), ((2, 9, 13), torch.tensor([9, 1]), 41.0, [40.0, 41.0]),
        ((2, 9, 13), torch.tensor([3, 4]), 42.0, [40.0, 41.0]), ((1, 9, 13), torch.tensor([6]), 42.0, [41.0, 42.0]),
        ((2, 9, 13), torch.tensor([21, 22]), 40.0, [42.0, 40.0])]   # 40 was seen: built again
    first = None
    for shape, seeds, z, kept in calls:
        field = octave_noise(shape, seeds, cfg, z=z)
        for b in range(shape[0]):
            np.testing.assert_allclose(field[b].numpy(), hand_built_octaves(int(seeds[b]), 9, 13, z, cfg),
                                       rtol=0, atol=1e-6)
        assert list(simplex._GRID_CACHE.entries) == [at[k] for k in kept]    # newest last
        first = field if first is None else first
    np.testing.assert_allclose(field.numpy(), first.numpy(), rtol=0, atol=1e-7)   # direct sum vs operator
    monkeypatch.setattr(simplex, "_geometry", lambda *xyz: pytest.fail("geometry recomputed for a kept grid"))
    octave_noise((2, 9, 13), torch.tensor([3, 4]), cfg, z=42.0)


def test_octave_noise_reproducible_and_seed_dependent():
    cfg = NoiseConfig()
    a = octave_noise((3, 24, 20), torch.tensor([1, 2, 3]), cfg, z=300.0)
    assert torch.equal(a, octave_noise((3, 24, 20), torch.tensor([1, 2, 3]), cfg, z=torch.tensor([300.0] * 3)))
    b = octave_noise((3, 24, 20), torch.tensor([1, 2, 4]), cfg, z=300.0)
    assert torch.equal(a[:2], b[:2]) and (a[2] - b[2]).abs().max() > 0.1
    assert (a[0] - a[1]).abs().max() > 0.1                      # each sample its own seed


def test_octave_noise_standardizes_per_sample():
    seeds, z = torch.tensor([5, 6, 7]), torch.tensor([0.0, 1.0, 999.0])
    field = octave_noise((3, 32, 40), seeds, NoiseConfig(standardize=True), z=z)
    std, mean = torch.std_mean(field.double(), dim=(1, 2), correction=0)
    np.testing.assert_allclose(mean.numpy(), 0, atol=1e-5)
    np.testing.assert_allclose(std.numpy(), 1, atol=1e-5)
    raw = octave_noise((3, 32, 40), seeds, NoiseConfig(standardize=False), z=z)
    assert raw.std(dim=(1, 2)).max() < 0.9                      # AnoDDPM's unstandardised field is narrower


def test_octave_noise_checks_its_arguments():
    with pytest.raises(ValueError, match="one seed per sample"):
        octave_noise((2, 4, 4), torch.tensor([1]), NoiseConfig())
    with pytest.raises(ValueError, match="one value per sample"):
        octave_noise((2, 4, 4), torch.tensor([1, 2]), NoiseConfig(), z=torch.tensor([1.0, 2.0, 3.0]))


def test_sample_noise_reproducible_from_a_generator():
    cfg = NoiseConfig()
    first = sample_noise((4, 16, 16), cfg, generator=torch.Generator().manual_seed(8), z=torch.full((4,), 250.0))
    again = sample_noise((4, 16, 16), cfg, generator=torch.Generator().manual_seed(8), z=torch.full((4,), 250.0))
    other = sample_noise((4, 16, 16), cfg, generator=torch.Generator().manual_seed(9), z=torch.full((4,), 250.0))
    assert torch.equal(first, again) and not torch.equal(first, other)
    assert all((first[i] - first[j]).abs().max() > 0.1 for i in range(4) for j in range(i))   # fresh seed per sample
    seeds = torch.randint(0, 2 ** 31 - 1, (4,), generator=torch.Generator().manual_seed(8))
    assert torch.equal(first, octave_noise((4, 16, 16), seeds, cfg, z=250.0))


def test_sample_noise_explicit_seeds_and_gaussian():
    cfg = NoiseConfig()
    seeds = torch.tensor([11, 12])
    assert torch.equal(sample_noise((2, 8, 8), cfg, seeds=seeds, z=3.0), octave_noise((2, 8, 8), seeds, cfg, z=3.0))
    gauss = sample_noise((2, 8, 8), NoiseConfig(kind="gaussian"), generator=torch.Generator().manual_seed(4))
    assert torch.equal(gauss, torch.randn((2, 8, 8), generator=torch.Generator().manual_seed(4)))
