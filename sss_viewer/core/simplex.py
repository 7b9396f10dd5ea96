"""OpenSimplex 3D noise in torch, equal to the opensimplex package, and AnoDDPM's octave noise from it."""

from __future__ import annotations

import functools
import threading
import warnings
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch

from .config import NoiseConfig

# The grid operator is a torch CSR tensor, built valid (invariants hold by construction): used as documented.
warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta", UserWarning)
warnings.filterwarnings("ignore", "Sparse invariant checks are implicitly disabled", UserWarning)

_STRETCH = -1.0 / 6   # (1/sqrt(3+1) - 1)/3: skews (x, y, z) onto the simplectic honeycomb
_SQUISH = 1.0 / 3     # (sqrt(3+1) - 1)/3: skews a lattice point back to space
_NORM = 103.0         # scales the sum of contributions into [-1, 1]

# The 24 gradients, vertices of a skewed rhombicuboctahedron, in the package's order.
_GRADIENTS3 = torch.tensor([
    [-11, 4, 4], [-4, 11, 4], [-4, 4, 11], [11, 4, 4], [4, 11, 4], [4, 4, 11],
    [-11, -4, 4], [-4, -11, 4], [-4, -4, 11], [11, -4, 4], [4, -11, 4], [4, -4, 11],
    [-11, 4, -4], [-4, 11, -4], [-4, 4, -11], [11, 4, -4], [4, 11, -4], [4, 4, -11],
    [-11, -4, -4], [-4, -11, -4], [-4, -4, -11], [11, -4, -4], [4, -11, -4], [4, -4, -11],
], dtype=torch.float64)                                          # (24, 3)

_LCG_A = 6364136223846793005   # Knuth's MMIX multiplier, as the package seeds its shuffle
_LCG_C = 1442695040888963407
_MASK64 = (1 << 64) - 1

# Lattice offsets relative to the super-cell origin reach -1..2 on each axis, so the hash tables are
# laid out with one row of padding before and two after the 256 wrapped values: a lattice point
# (i + ox, j + oy) then sits at flat position i * _SIDE + j + (ox + 1) * _SIDE + (oy + 1).
_SIDE = 259                    # 1 + 256 + 2
_HASH2 = _SIDE * _SIDE         # entries of one seed's 2D hash table
_GRADS = 514                   # entries of one seed's gradient table: hash (<256) + z (<256) + oz + 1 (<4)
_CPU_CHUNK = 1 << 15           # (table, point) pairs per pass on a CPU: torch's parallel grain, cache-sized
_DEVICE_CHUNK = 1 << 22        # points per pass on an accelerator: bounds the temporaries (~0.5 KiB a point)


def _signed64(value: int) -> int:
    """value wrapped to a signed 64-bit integer, as the package's ctypes.c_int64 overflow does."""
    value &= _MASK64
    return value - (1 << 64) if value >> 63 else value


def _lcg_steps() -> tuple[np.ndarray, np.ndarray]:
    """A^k and C (A^k - 1)/(A - 1) mod 2^64 as signed int64, for the states k = 4..259 the shuffle uses."""
    mults, incs, a, c = [], [], 1, 0
    for _ in range(259):
        a, c = (a * _LCG_A) & _MASK64, (c * _LCG_A + _LCG_C) & _MASK64
        mults.append(_signed64(a))
        incs.append(_signed64(c))
    return np.array(mults[3:]), np.array(incs[3:])


_LCG_MULTS, _LCG_INCS = _lcg_steps()     # (256,) each


def _permutations(seeds: torch.Tensor) -> torch.Tensor:
    """The package's seeded permutation of 0..255 (its _init), for B seeds at once: (B,) int64 -> (B, 256) int64.

    The LCG s <- s * A + C (mod 2^64) runs three warm-up steps and then one step per position i = 255..0;
    its k-th state is s_k = A^k s_0 + C (A^k - 1)/(A - 1), so all 259 states come from one product.
    Position i takes source[r] with r = (s + 31) mod (i + 1), and source[r] takes source[i]: a sequential
    shuffle, so the loop runs over the 256 positions, each step vectorised across the seeds (in NumPy, whose
    small operations cost a fraction of torch's).
    """
    seeds = seeds.to("cpu", torch.int64).reshape(-1).numpy()              # (B,)
    states = seeds[:, None] * _LCG_MULTS + _LCG_INCS                     # (B, 256), wraps mod 2^64
    sizes = np.arange(256, 0, -1)                                        # i + 1 for i = 255..0
    picks = (states % sizes + 31) % sizes                                # (B, 256), floor-mod as in Python
    rows = np.arange(len(seeds))
    source = np.tile(np.arange(256), (len(seeds), 1))                    # (B, 256)
    perm = np.empty_like(source)                                         # (B, 256)
    for step, i in enumerate(range(255, -1, -1)):
        r = picks[:, step]                                               # (B,)
        perm[:, i] = source[rows, r]
        source[rows, r] = source[:, i]
    return torch.from_numpy(perm)


def _tables(perm: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded lookup tables on a device for B permutations: the 2D hash and the gradients.

    hash2[b, i, j] = perm[b, (perm[b, (i - 1) mod 256] + j - 1) mod 256]       (B * _SIDE^2,) uint8
    grads[:, b, m] = the gradient numbered perm[b, (m - 1) mod 256] mod 24     (3, B * _GRADS) float64
    so that the package's gradient at lattice point (x, y, z), GRADIENTS3[perm_grad_index3[(h + z) & 255]]
    with h = perm[(perm[x & 255] + y) & 255], is grads[:, b, h + (z mod 256) + 1] with
    h = hash2[b, (x mod 256) + 1, (y mod 256) + 1].
    """
    perm = perm.to(device)                                               # (B, 256)
    wrap = (torch.arange(_SIDE, device=device) - 1) % 256                # (_SIDE,)
    windows = perm.to(torch.uint8).repeat(1, 3).unfold(1, _SIDE, 1)      # (B, 510, _SIDE): perm from each start
    starts = ((perm[:, wrap] - 1) % 256)[:, :, None].expand(-1, -1, _SIDE)   # (B, _SIDE, _SIDE)
    hash2 = windows.gather(1, starts)                                    # (B, _SIDE, _SIDE)
    wrap = (torch.arange(_GRADS, device=device) - 1) % 256               # (_GRADS,)
    grads = _GRADIENTS3.to(device)[perm[:, wrap] % 24]                   # (B, _GRADS, 3)
    return hash2.flatten(), grads.permute(2, 0, 1).reshape(3, -1).contiguous()


@functools.lru_cache(maxsize=16)
def _seed_tables(seed: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """_tables for one seed (already wrapped to int64), cached per (seed, device)."""
    return _tables(_permutations(torch.tensor([seed])), device)


def _extra_vertices(region: int, p: int, q: int) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """The package's two extra lattice points for one case, as offsets from the super-cell origin.

    region 0 (tetrahedron at (0,0,0)) and 1 (at (1,1,1)): p is the closest-vertex code c, q is 1 when the
    tetrahedron's own corner is among the two closest. region 2 (the octahedron): p, q are the two closest
    points' codes. Bits 1, 2, 4 of a code stand for the x, y, z axes.
    """
    if region == 0 and q:
        x = (-1, 0) if not p & 1 else (1, 1)
        y = (1, 1) if p & 2 else ((0, -1) if not p & 1 else (-1, 0))
        z = (0, -1) if not p & 4 else (1, 1)
    elif region == 0:
        x, y, z = [(1, 1) if p & bit else (0, -1) for bit in (1, 2, 4)]
    elif region == 1 and q:
        x = (2, 1) if p & 1 else (0, 0)
        y = ((1, 2) if p & 1 else (2, 1)) if p & 2 else (0, 0)
        z = (1, 2) if p & 4 else (0, 0)
    elif region == 1:
        x, y, z = [(1, 2) if p & bit else (0, 0) for bit in (1, 2, 4)]
    else:
        p_further, q_further = bin(p).count("1") == 2, bin(q).count("1") == 2
        if p_further and q_further:            # both on the (1,1,1) side: it, and (2,0,0) on the shared axis
            return (1, 1, 1), _axis_vertex(p & q)
        if not (p_further or q_further):       # both on the (0,0,0) side: it, and (-1,1,1) off the omitted axis
            return (0, 0, 0), _minus_vertex(p | q)
        far, near = (p, q) if p_further else (q, p)   # one each: (-1,1,1) from the far, (2,0,0) from the near
        return _minus_vertex(far), _axis_vertex(near)
    return (x[0], y[0], z[0]), (x[1], y[1], z[1])


def _axis_vertex(code: int) -> tuple[int, int, int]:
    """(2,0,0) along the first axis set in code (x, then y, else z)."""
    axis = 0 if code & 1 else (1 if code & 2 else 2)
    return tuple(2 if k == axis else 0 for k in range(3))


def _minus_vertex(code: int) -> tuple[int, int, int]:
    """(1,1,1) with -1 on the first axis missing from code (x, then y, else z)."""
    axis = 0 if not code & 1 else (1 if not code & 2 else 2)
    return tuple(-1 if k == axis else 1 for k in range(3))


def _tetra_case(bits: int) -> tuple[int, int]:
    """The package's branches in the tetrahedron at (0,0,0), from the comparison bits of _case_key.

    Picks the two closest of (1,0,0), (0,1,0), (0,0,1) (codes a, b), then whether (0,0,0) beats one of them:
    if so c is the closer of a, b and q = 1, else c = a | b and q = 0.
    """
    x_lt_y, z_gt_y, z_gt_x, y_gt_z, w_gt_x, w_gt_y, w_gt_z = ((bits >> k) & 1 for k in range(7))
    if not x_lt_y and z_gt_y:       # y's place goes to z
        a, b, wins, b_closer = 1, 4, w_gt_x or w_gt_z, z_gt_x
    elif x_lt_y and z_gt_x:         # x's place goes to z
        a, b, wins, b_closer = 4, 2, w_gt_z or w_gt_y, y_gt_z
    else:
        a, b, wins, b_closer = 1, 2, w_gt_x or w_gt_y, x_lt_y
    return ((b if b_closer else a), 1) if wins else (a | b, 0)


def _octa_case(bits: int) -> tuple[int, int]:
    """The package's branches in the octahedron, from the comparison bits of _case_key: the two closest codes.

    (0,0,1) vs (1,1,0) gives a, (0,1,0) vs (1,0,1) gives b, and the closer of (1,0,0), (0,1,1) replaces the
    further of a, b if it is closer still.
    """
    xy_far, xz_far, yz_far, a_le_b, a_lt_s, b_lt_s = ((bits >> k) & 1 for k in range(6))
    a, b, point = (3 if xy_far else 4), (5 if xz_far else 2), (6 if yz_far else 1)
    if a_le_b and a_lt_s:
        a = point
    elif not a_le_b and b_lt_s:
        b = point
    return a, b


def _extra_tables(cases: list) -> tuple[torch.Tensor, ...]:
    """Per case key, the two extra points as (2, K) tables: hash offset, z offset (int64), x, y, z shifts (float64).

    A lattice offset o sits at o + (ox + oy + oz)/3 (1,1,1) in space (the squish), so its contribution's
    displacement is d0 - o - sum(o)/3, with d0 the point's displacement from the super-cell origin.
    """
    offsets = torch.tensor(cases).permute(1, 2, 0)                                  # (2, 3, K)
    shift = offsets.double() + offsets.sum(1, keepdim=True).double() * _SQUISH      # (2, 3, K)
    xy = (offsets[:, 0] + 1) * _SIDE + offsets[:, 1] + 1                             # (2, K)
    return xy.contiguous(), (offsets[:, 2] + 1).contiguous(), *(shift[:, axis].contiguous() for axis in range(3))


# The super-cell (a stretched cube) splits by in_sum = xins + yins + zins into three regions: the
# tetrahedra at (0,0,0) and (1,1,1) and the octahedron between. Per region: the corners its simplex sums,
# grouped by their (x, y) offset (one hash lookup serves a group), and the extra points per case key.
_REGIONS = (
    {(0, 0): (0, 1), (1, 0): (0,), (0, 1): (0,)},                                   # in_sum <= 1
    {(1, 1): (0, 1), (1, 0): (1,), (0, 1): (1,)},                                   # in_sum >= 2
    {(1, 0): (0, 1), (0, 1): (0, 1), (0, 0): (1,), (1, 1): (0,)},                   # between
)
_EXTRAS = (
    _extra_tables([_extra_vertices(0, *_tetra_case(bits)) for bits in range(128)]),
    _extra_tables([_extra_vertices(1, 7 - c, q) for c, q in map(_tetra_case, range(128))]),
    _extra_tables([_extra_vertices(2, *_octa_case(bits)) for bits in range(64)]),
)


@functools.lru_cache(maxsize=8)
def _extras_on(device: torch.device) -> tuple[tuple[torch.Tensor, ...], ...]:
    """_EXTRAS on a device, moved once."""
    return tuple(tuple(t.to(device) for t in tables) for tables in _EXTRAS)


def _bits(*conditions: torch.Tensor) -> torch.Tensor:
    """sum_k 2^k condition_k (k < 8), summed in uint8 and returned as int64 indices."""
    code = conditions[0].to(torch.uint8)
    for k, condition in enumerate(conditions[1:], start=1):
        code.add_(condition, alpha=1 << k)
    return code.to(torch.int64)


def _case_key(region: int, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, in_sum: torch.Tensor) -> torch.Tensor:
    """Case key (n,) of the points of a region, at in-cell coordinates x, y, z: the comparisons the
    package's branches make there, as bits (decoded by _tetra_case and _octa_case).

    The tetrahedron at (1,1,1) is the one at (0,0,0) mirrored: its comparisons are those of
    (-x, -y, -z, in_sum - 3), and its closest-vertex codes are the complements 7 - c.
    """
    if region == 0:
        w = 1 - in_sum
        return _bits(x < y, z > y, z > x, y > z, w > x, w > y, w > z)
    if region == 1:
        w = 3 - in_sum
        return _bits(x > y, z < y, z < x, y < z, w < x, w < y, w < z)
    p1, p2, p3 = x + y, x + z, y + z
    a_score, b_score, score = (p1 - 1).abs_(), (p2 - 1).abs_(), (p3 - 1).abs_()
    return _bits(p1 > 1, p2 > 1, p3 > 1, a_score <= b_score, a_score < score, b_score < score)


def _lookup(table: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """table[index] for a 1-D table and an index tensor of any shape."""
    return table.index_select(0, index.view(-1)).view(index.shape)


def _region_terms(region: int, d0: tuple[torch.Tensor, ...], ins: tuple[torch.Tensor, ...],
                  in_sum: torch.Tensor) -> tuple[dict, list]:
    """The contributions at the n points of one region, all but their gradients: its simplex's corners and
    the package's two extra points, each as the attenuation max(0, 2 - |d_v|^2)^4 and the displacement d_v.

    d_v = d0 - v - (vx + vy + vz)/3. For a corner (v in {0,1}^3, s = vx + vy + vz) the attenuation's base is
    2 - |d_v|^2 = F_s + 2 <d0, v>, F_s = 2 - |d0|^2 + (2s/3) sum(d0) - s - s^2. Returns the corners as
    {(vx, vy): [(vz, attn4, d), ...]} (a group shares one hash lookup) and the extra points as
    [(hash offset (n,), z offset (n,), attn4, d), ...].
    """
    dx0, dy0, dz0 = d0
    dsum = dx0 + dy0 + dz0
    f0 = (dx0 * dx0).addcmul_(dy0, dy0).addcmul_(dz0, dz0).neg_().add_(2)
    f = [f0] + [torch.add(f0, dsum, alpha=2 * s / 3).sub_(s + s * s) for s in (1, 2, 3)]
    shifted = {}                                                                     # (axis, o, s) -> d0 - o - s/3
    corners = {}
    for (ox, oy), ozs in _REGIONS[region].items():
        for oz in ozs:
            v, s = (ox, oy, oz), ox + oy + oz
            along = [d0[axis] for axis in range(3) if v[axis]]                       # <d0, v> = their sum
            attn = (f[0] if s == 0 else torch.add(f[3], dsum, alpha=2) if s == 3
                    else torch.add(f[s], along[0] if s == 1 else along[0] + along[1], alpha=2))
            for axis in range(3):
                if (axis, v[axis], s) not in shifted:
                    shifted[axis, v[axis], s] = d0[axis] - (v[axis] + s * _SQUISH)
            d = tuple(shifted[axis, v[axis], s] for axis in range(3))
            corners.setdefault((ox, oy), []).append((oz, attn.relu_().square_().square_(), d))

    key = _case_key(region, *ins, in_sum)                                            # (n,)
    extras = []
    for xy, zo, *shift in zip(*_extras_on(dx0.device)[region]):                       # each extra point
        d = tuple(torch.sub(d0[axis], shift[axis].index_select(0, key)) for axis in range(3))
        attn = (d[0] * d[0]).addcmul_(d[1], d[1]).addcmul_(d[2], d[2]).neg_().add_(2)
        extras.append((xy.index_select(0, key), zo.index_select(0, key), attn.relu_().square_().square_(), d))
    return corners, extras


def _sum_terms(terms: tuple[dict, list], hash_index: torch.Tensor, grad_index: torch.Tensor, hash2: torch.Tensor,
               grads: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """103 x noise: the sum over _region_terms of attn4 <g_v, d_v> with the gradients g_v of G tables, whose
    hash and gradient indices at the points are hash_index, grad_index (G, n). Returns (G, n) float64."""
    corners, extras = terms
    value = torch.zeros(grad_index.shape, dtype=grads[0].dtype, device=grad_index.device)  # (G, n)
    for (ox, oy), group in corners.items():
        hashed = grad_index + _lookup(hash2[(ox + 1) * _SIDE + oy + 1:], hash_index)  # (G, n)
        for oz, attn4, d in group:
            gx, gy, gz = (_lookup(g[oz + 1:], hashed) for g in grads)                # (G, n) each
            value.addcmul_(attn4, gx.mul_(d[0]).addcmul_(gy, d[1]).addcmul_(gz, d[2]))
    for xy, zo, attn4, d in extras:
        index = (zo + grad_index).add_(_lookup(hash2, xy + hash_index))              # (G, n)
        gx, gy, gz = (_lookup(g, index) for g in grads)
        value.addcmul_(attn4, gx.mul_(d[0]).addcmul_(gy, d[1]).addcmul_(gz, d[2]))
    return value


def _floor(v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """floor(v) as float64 and as int64 mod 256, exact for every finite float64.

    Not torch.floor: on a CPU it may call a threaded vector library whose threads stall on a busy machine.
    The int64 truncation is exact up to 2^62; beyond, every float is an integer and a multiple of 256.
    """
    clamped = v.clamp(-2.0 ** 62, 2.0 ** 62)
    whole = clamped.to(torch.int64)                                                  # rounded toward zero
    whole.add_(whole > clamped, alpha=-1)                                            # ... and down
    return whole.to(torch.float64).add_(v - clamped), whole.bitwise_and_(255)


def _geometry(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> list[tuple]:
    """Everything about flat float64 points (n,) that does not depend on the seed: per region of the
    super-cell, (its points (m,), _region_terms, hash index (m,) into table 0, gradient index (m,)).

    Positions and branch decisions follow the package's float64 operations exactly.
    """
    # Place input coordinates on the simplectic honeycomb; find the super-cell and the region in it.
    stretch = (x + y + z).mul_(_STRETCH)                                             # (n,)
    xs, ys, zs = x + stretch, y + stretch, z + stretch
    (xsb, xm), (ysb, ym), (zsb, zm) = _floor(xs), _floor(ys), _floor(zs)
    squish = (xsb + ysb + zsb).mul_(_SQUISH)
    d0 = (x - (xsb + squish), y - (ysb + squish), z - (zsb + squish))
    ins = (xs.sub_(xsb), ys.sub_(ysb), zs.sub_(zsb))
    in_sum = ins[0] + ins[1] + ins[2]
    tetra0, tetra1 = in_sum <= 1, in_sum >= 2
    hash_base = xm.mul_(_SIDE).add_(ym)                                              # (n,) into hash2, table 0

    regions = []
    for region, mask in enumerate((tetra0, tetra1, ~(tetra0 | tetra1))):
        points = mask.nonzero().squeeze(1)                                           # (m,)
        if len(points):
            terms = _region_terms(region, *[tuple(v.index_select(0, points) for v in vs) for vs in (d0, ins)],
                                  in_sum.index_select(0, points))
            regions.append((points, terms, hash_base.index_select(0, points), zm.index_select(0, points)))
    return regions


def _noise3_chunk(regions: list[tuple], n: int, table: torch.Tensor, hash2: torch.Tensor,
                  grads: tuple[torch.Tensor, ...], group: int, out: torch.Tensor) -> None:
    """out (T, n) += OpenSimplex 3D noise at n points given by their _geometry, with the tables
    `table`: (T, 1), every table at every point (taken `group` tables at a time), or (1, n), one table a point.

    noise = sum over the lattice points v the package selects of max(0, 2 - |d_v|^2)^4 <g_v, d_v> / 103,
    d_v the point's displacement from v in space, g_v the gradient hashed from v's lattice coordinates;
    the points of each region of the super-cell are gathered and summed together.
    """
    for rows in range(0, table.shape[0], group):
        value = torch.empty((min(group, table.shape[0] - rows), n), dtype=torch.float64, device=out.device)  # (G, n)
        for points, terms, hash_at, grad_at in regions:
            t = table[rows:rows + group] if table.shape[1] == 1 else table.index_select(1, points)   # (G,1), (1,m)
            value.index_copy_(1, points, _sum_terms(terms, hash_at + t * _HASH2, grad_at + t * _GRADS, hash2, grads))
        out[rows:rows + group].add_(value.div_(_NORM))


def _pieces(n_points: int, tables: int, device: torch.device) -> tuple[list[slice], int]:
    """How _accumulate splits N points with T tables: the pieces, and the tables taken per pass.

    On a CPU every operation stays within torch's parallel grain (_CPU_CHUNK elements): it runs on one
    thread, in cache, unaffected by thread stalls on a busy machine.
    """
    if device.type == "cpu":
        size = max(_CPU_CHUNK // tables, _CPU_CHUNK // 4)                             # points per piece
        group = max(_CPU_CHUNK // size, 1)                                           # tables per pass
    else:
        size, group = max(_DEVICE_CHUNK // tables, 1), tables
    return [slice(start, min(start + size, n_points)) for start in range(0, n_points, size)], group


def _accumulate(out: torch.Tensor, coords: Callable[[slice], tuple[torch.Tensor, ...]], hash2: torch.Tensor,
                grads: torch.Tensor) -> None:
    """out (T, N) float64 += noise at N points, a piece at a time: coords(part) gives the piece's
    float64 x, y, z (n,) and its tables, (T, 1) or (1, n) (see _noise3_chunk)."""
    grads = tuple(grads)                                                             # gx, gy, gz
    pieces, group = _pieces(out.shape[1], out.shape[0], out.device)
    for part in pieces:
        *xyz, table = coords(part)
        _noise3_chunk(_geometry(*xyz), part.stop - part.start, table, hash2, grads, group, out[:, part])


def _arange(part: slice, device: torch.device) -> torch.Tensor:
    """The flat indices of a piece, int64."""
    return torch.arange(part.start, part.stop, device=device)


def _coords(x, y, z) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.dtype, torch.device]:
    """x, y, z as broadcast float64 tensors, with the result dtype (float inputs' promotion, else float64) and
    the device (the first tensor's, else the CPU)."""
    tensors = [v for v in (x, y, z) if isinstance(v, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cpu")
    floats = [v.dtype for v in tensors if v.is_floating_point()]
    dtype = floats[0] if floats else torch.float64
    for other in floats[1:]:
        dtype = torch.promote_types(dtype, other)
    x, y, z = torch.broadcast_tensors(*(torch.as_tensor(v, dtype=torch.float64, device=device) for v in (x, y, z)))
    return x, y, z, dtype, device


@torch.no_grad()
def noise3(x, y, z, seed: int) -> torch.Tensor:
    """OpenSimplex 3D noise at coordinates x, y, z (tensors or numbers, broadcast together), equal to
    opensimplex.OpenSimplex(seed).noise3(x, y, z) to 1e-6 for every int seed (in practice to ~1e-15).

    Computed in float64 on the coordinates' device; returned in their floating dtype (float64 if none is).
    """
    x, y, z, dtype, device = _coords(x, y, z)
    points = [v.reshape(-1) for v in (x, y, z)]
    table = torch.zeros((1, 1), dtype=torch.int64, device=device)
    out = torch.zeros((1, x.numel()), dtype=torch.float64, device=device)           # (1, N)
    _accumulate(out, lambda part: (*(v[part] for v in points), table), *_seed_tables(_signed64(int(seed)), device))
    return out.reshape(x.shape).to(dtype)


@torch.no_grad()
def noise3_batch(x, y, z, seeds: torch.Tensor) -> torch.Tensor:
    """noise3 with one seed per sample: row b of the result is noise3(x[b], y[b], z[b], int(seeds[b])).

    seeds: (B,) integers; x, y, z broadcast together to (B, ...) or (1, ...); in the second case the
    points are the same for every sample and their geometry is computed once. The B permutation tables
    are built together.
    """
    seeds = torch.as_tensor(seeds).reshape(-1)                                       # (B,)
    x, y, z, dtype, device = _coords(x, y, z)
    if x.dim() == 0 or x.shape[0] not in (1, len(seeds)):
        raise ValueError(f"coordinates of shape {tuple(x.shape)} need a leading dimension of {len(seeds)} "
                         f"(one per seed) or 1")
    samples, n = len(seeds), x[0].numel()
    hash2, grads = _tables(_permutations(seeds), device)
    points = [v.reshape(-1) for v in (x, y, z)]                                      # (n,) or (B n,)
    if x.shape[0] == 1:                                                              # shared points: (B, 1) tables
        table = torch.arange(samples, device=device)[:, None]
        out = torch.zeros((samples, n), dtype=torch.float64, device=device)         # (B, n)
        _accumulate(out, lambda part: (*(v[part] for v in points), table), hash2, grads)
    else:                                                                            # a table per point: (1, B n)
        out = torch.zeros((1, samples * n), dtype=torch.float64, device=device)     # (1, B n)
        _accumulate(out, lambda part: (*(v[part] for v in points), _arange(part, device)[None] // n), hash2, grads)
    return out.reshape(samples, *x.shape[1:]).to(dtype)


class _GridOperator(NamedTuple):
    """The seed-free part of octave noise on a grid shared by every sample: with the gradients g_v of a
    table's V lattice points, field = matrix @ (g_v0x, g_v0y, g_v0z, g_v1x, ...), one column per table."""
    matrix: torch.Tensor        # (H W, 3V) float64 CSR: sum over octaves k of p^k attn4 d_v / 103 at each pixel
    hash_at: torch.Tensor       # (V,) int64: each lattice point's position in a 2D hash table
    grad_at: torch.Tensor       # (V,) int64: and its offset in the gradient table after the hash

    def fields(self, hash2: torch.Tensor, grads: torch.Tensor) -> torch.Tensor:
        """(T, H W) float64 fields for the T tables hash2 (T * _HASH2,) and grads (3, T * _GRADS)."""
        tables = hash2.numel() // _HASH2
        number = hash2.view(tables, _HASH2).index_select(1, self.hash_at).long().add_(self.grad_at)  # (T, V)
        g = grads.view(3, tables, _GRADS).gather(2, number.expand(3, -1, -1))                        # (3, T, V)
        return (self.matrix @ g.permute(2, 0, 1).reshape(-1, tables)).T                              # (T, H W)


_BUILD_CHUNK = 1 << 16         # points whose geometry is found together while building a _GridOperator


def _grid_operator(x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, row: torch.Tensor, weight: torch.Tensor,
                   n_rows: int) -> _GridOperator:
    """The _GridOperator of n points (flat float64 x, y, z), point i adding weight[i] x noise to row[i].

    Every lattice point term of _region_terms with a non-zero attenuation becomes three entries (one per
    gradient axis) in the row of its point, in the column of its lattice point; terms of one row and one
    lattice point (different octaves whose lattice points hash alike) are summed. Rows and columns are
    sorted, as CSR products on a GPU assume.
    """
    rows, keys, values = [], [], []                                   # (m,), (m,), (m, 3) per term
    for start in range(0, len(x), _BUILD_CHUNK):
        part = slice(start, start + _BUILD_CHUNK)
        for points, (corners, extras), hash_at, grad_at in _geometry(x[part], y[part], z[part]):
            points = points + start
            terms = [(hash_at + ((ox + 1) * _SIDE + oy + 1), grad_at + (oz + 1), attn4, d)
                     for (ox, oy), group in corners.items() for oz, attn4, d in group]
            terms += [(hash_at + xy, grad_at + zo, attn4, d) for xy, zo, attn4, d in extras]
            for hash_pos, grad_pos, attn4, d in terms:
                live = (attn4 > 0).nonzero().squeeze(1)               # the others contribute nothing
                scale = attn4.index_select(0, live) * weight.index_select(0, points.index_select(0, live))
                rows.append(row.index_select(0, points.index_select(0, live)))
                keys.append(hash_pos.index_select(0, live) * 1024 + grad_pos.index_select(0, live))
                values.append(torch.stack([scale * v.index_select(0, live) for v in d], dim=1))
    rows, keys, values = torch.cat(rows), torch.cat(keys), torch.cat(values)
    vertices, column = torch.unique(keys, return_inverse=True)        # (V,), (m,)
    entry, order = torch.sort(rows * len(vertices) + column)          # by row, then lattice point
    entry, first = torch.unique_consecutive(entry, return_inverse=True)
    summed = values.new_zeros(len(entry), 3).index_add_(0, first, values.index_select(0, order))  # (e, 3)
    crow = torch.zeros(n_rows + 1, dtype=torch.int64, device=x.device)
    crow[1:] = torch.bincount(entry // len(vertices), minlength=n_rows).cumsum(0).mul_(3)
    col = ((entry % len(vertices)) * 3)[:, None] + torch.arange(3, device=x.device)  # (e, 3)
    index = torch.int32 if 3 * len(entry) < 2 ** 31 else torch.int64   # int32: 1.5x faster products on a CPU
    matrix = torch.sparse_csr_tensor(crow.to(index), col.view(-1).to(index), summed.view(-1),
                                     size=(n_rows, 3 * len(vertices)), check_invariants=False)  # valid as built
    return _GridOperator(matrix, vertices // 1024, vertices % 1024)


class _GridCache:
    """The _GridOperator of the last few shared grids seen twice (a volume's slices at one timestep share
    one), newest last; 16 bytes an entry, about 105 entries a pixel for six octaves: 26 MB for a 128 x 128
    grid, 106 MB for 256 x 256. A grid seen once is only remembered: building its operator costs about two
    direct sums, a loss for one-off grids such as each step of the iterative chain."""

    def __init__(self, grids: int = 2, remembered: int = 16):
        self.grids, self.remembered = grids, remembered
        self.entries, self.seen, self.lock = {}, {}, threading.Lock()

    def get(self, key: tuple, build: Callable[[], _GridOperator]) -> _GridOperator | None:
        """The operator of `key`: None on its first use, built on the second, kept after."""
        with self.lock:
            op = self.entries.pop(key, None)
            again = op is not None or self.seen.pop(key, False)
            self.seen[key] = True                                                # newest last
            while len(self.seen) > self.remembered:
                self.seen.pop(next(iter(self.seen)))
        if not again:
            return None
        if op is None:
            op = build()
        with self.lock:
            self.entries[key] = op                                               # newest last
            while len(self.entries) > self.grids:
                self.entries.pop(next(iter(self.entries)))
        return op


_GRID_CACHE = _GridCache()


def forget_geometry() -> None:
    """Drop the kept grid operators and the grids seen (to time cold computation, or to free memory)."""
    with _GRID_CACHE.lock:
        _GRID_CACHE.entries.clear()
        _GRID_CACHE.seen.clear()


@torch.no_grad()
def octave_noise(shape: tuple[int, int, int], seeds: torch.Tensor, cfg: NoiseConfig,
                 z: torch.Tensor | float = 0.0, device=None) -> torch.Tensor:
    """AnoDDPM's octave simplex noise on B slices' pixel grids, sample b with its own seed: (B, H, W) float32.

    field_b(row, col) = sum_k persistence^k noise3(col f_k, row f_k, z_b f_k, seeds[b]),
    f_k = frequency 2^k for k = 0..octaves-1; z_b (e.g. the timestep) is a float or a (B,) tensor. When
    every z_b is equal the samples share one grid; from its second use on, the grid's seed-free part is a
    sparse operator (_GridOperator, kept for the next calls) and a call only looks up the seeds' gradients
    and multiplies. With cfg.standardize each field is then rescaled to zero mean and unit (population) std.
    """
    b, h, w = shape
    seeds = torch.as_tensor(seeds).reshape(-1)                                       # (B,)
    if len(seeds) != b:
        raise ValueError(f"octave_noise needs one seed per sample: got {len(seeds)} seeds for a batch of {b}")
    z = torch.as_tensor(z, dtype=torch.float64).reshape(-1)                          # (B,) or (1,)
    if len(z) not in (1, b):
        raise ValueError(f"z must be a float or hold one value per sample ({b}), not {len(z)}")
    device = torch.device("cpu" if device is None else device)
    z = (z[:1] if bool((z == z[0]).all()) else z).to(device)                         # one z: shared points
    hash2, grads = _tables(_permutations(seeds), device)
    freq = torch.tensor([cfg.frequency * 2.0 ** k for k in range(cfg.octaves)], dtype=torch.float64,
                        device=device)                                               # (K,) f_k
    shared = len(z) == 1
    if shared:            # one grid for every sample: its seed-free operator, from its second use on
        key = (h, w, float(z[0]), cfg.octaves, cfg.frequency, cfg.persistence, str(device))
        op = _GRID_CACHE.get(key, lambda: _octave_operator(h, w, z, freq, cfg.persistence))
        if op is not None:
            return _finish(op.fields(hash2, grads).view(b, h, w), cfg)

    # Summed directly: every point of every octave, octave after octave, (K cols,) float64 coordinates
    # (col f_k, row f_k, z f_k), with every table (a shared grid) or each point's sample's table.
    rows, cols = (b, h * w) if shared else (1, b * h * w)
    index = torch.arange(cols, device=device)                                        # (cols,)
    col, row = (index % w).double(), (index // w % h).double()
    sample = index // (h * w)                                                        # (cols,) its slice
    x, y = (torch.outer(freq, v).view(-1) for v in (col, row))                       # (K cols,)
    z = torch.outer(freq, z.expand(cols) if shared else z.index_select(0, sample)).view(-1)  # (K cols,)
    tables = torch.arange(b, device=device)[:, None] if shared else sample.repeat(cfg.octaves)[None]

    def coords(part: slice) -> tuple[torch.Tensor, ...]:
        """A piece of the points, and their tables: every table (B, 1), or each point's own (1, n)."""
        return x[part], y[part], z[part], tables if shared else tables[:, part]

    # Every octave in one pass (six times fewer, larger operations: what an accelerator needs), then summed.
    octaves = torch.zeros((rows, cfg.octaves * cols), dtype=torch.float64, device=device)  # (rows, K cols)
    _accumulate(octaves, coords, hash2, grads)
    field = torch.zeros((rows, cols), dtype=torch.float64, device=device)           # (B, H W) or (1, B H W)
    for k, octave in enumerate(octaves.split(cols, dim=1)):
        field.add_(octave, alpha=cfg.persistence ** k)
    return _finish(field.view(b, h, w), cfg)


def _octave_operator(h: int, w: int, z: torch.Tensor, freq: torch.Tensor, persistence: float) -> _GridOperator:
    """The _GridOperator of every octave of an h x w pixel grid at z (1,): octave k's points (col f_k, row f_k,
    z f_k) add persistence^k / 103 x their noise to their pixel."""
    octaves, pixels = len(freq), h * w
    index = torch.arange(pixels, device=freq.device)                                 # (H W,)
    col, row = (index % w).double(), (index // w).double()
    x, y = (torch.outer(freq, v).view(-1) for v in (col, row))                       # (K H W,)
    z = torch.outer(freq, z.expand(pixels)).view(-1)                                 # (K H W,)
    weight = torch.tensor([persistence ** k / _NORM for k in range(octaves)], dtype=torch.float64,
                          device=freq.device).repeat_interleave(pixels)              # (K H W,)
    return _grid_operator(x, y, z, index.repeat(octaves), weight, pixels)


def _finish(field: torch.Tensor, cfg: NoiseConfig) -> torch.Tensor:
    """(B, H, W) float64 octave sums -> float32, each standardised to zero mean and unit std if cfg asks."""
    if cfg.standardize:
        std, mean = torch.std_mean(field, dim=(1, 2), correction=0, keepdim=True)   # (B, 1, 1)
        field = (field - mean) / std.clamp_min(torch.finfo(torch.float64).tiny)
    return field.float()


def sample_noise(shape: tuple[int, int, int], cfg: NoiseConfig, generator: torch.Generator | None = None,
                 seeds: torch.Tensor | None = None, z: torch.Tensor | float = 0.0, device=None) -> torch.Tensor:
    """Fresh noise (B, H, W) float32 by cfg.kind: "simplex" is octave_noise with one seed per sample,
    "gaussian" is N(0, 1) per pixel.

    The random draws (the B seeds in [0, 2^31 - 1), or the Gaussian field) come from generator (a CPU
    generator; torch's default one if None) on the CPU, so one generator seed gives the same noise on every
    device. Explicit seeds (B,) replace the draw: one simplex field, or one Gaussian field, per seed.
    """
    if cfg.kind == "gaussian":
        if seeds is None:
            return torch.randn(shape, generator=generator).to(device)
        return torch.stack([torch.randn(shape[1:], generator=torch.Generator().manual_seed(int(s)))
                            for s in torch.as_tensor(seeds).reshape(-1)]).to(device)  # (B, H, W), one seed each
    if seeds is None:
        seeds = torch.randint(0, 2 ** 31 - 1, (shape[0],), generator=generator)     # (B,)
    return octave_noise(shape, seeds, cfg, z=z, device=device)
