"""Ground geometry of the patch grids cut from a tile (tiles' own ground size: scale_alibi.contract.tiles)."""

from __future__ import annotations

import torch


def patch_centres_m(grid: int, patch_m: torch.Tensor) -> torch.Tensor:
    """Centres of a grid x grid patch grid in metres from the tile's top-left corner.

    patch_m: (B,) ground size of one patch (patch px * gsd). Returns (B, grid*grid, 2) holding
    (x, y) = ((col + 0.5) * patch_m, (row + 0.5) * patch_m), tokens in row-major order.
    """
    steps = torch.arange(grid, dtype=torch.float32, device=patch_m.device) + 0.5
    row, col = torch.meshgrid(steps, steps, indexing="ij")  # (grid, grid) each
    unit = torch.stack([col.reshape(-1), row.reshape(-1)], dim=-1)  # (N, 2) in patch units
    return unit.unsqueeze(0) * patch_m.to(torch.float32).reshape(-1, 1, 1)
