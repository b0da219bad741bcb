"""Model configurations: `tiny` (CPU tests), `base` (ViT-B-like, as the paper), `croma` (baseline).

`croma` is CROMA as published (Fuller et al. 2023, and the paper's code built on it): 16 heads
(its ALiBi slope set), independent radar and optical MAE masks, and a 2D-ALiBi bias counted in
patches of its own grid. `base` uses the paper's code's 16 heads as well.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace

from scale_alibi.contract.tiles import ground_size_at_lat_m


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of ScaleAlibiModel; image sizes come from the batch, not from here."""

    name: str = "base"
    patch_size: int = 8            # pixels per patch side, same on every grid
    lores_px: int = 256            # S1/S2 image side used for synthetic batches / benchmarks
    dim: int = 768
    heads: int = 16                # CROMA's and the paper's code's (sets the ALiBi slopes)
    mlp_ratio: float = 4.0
    lores_depth: int = 12          # E_lores (S2)
    radar_depth: int = 6           # E_radar (S1); CROMA uses half the optical depth
    hires_depth: int = 12          # E_hires (NAIP, 2x resolution)
    cross_depth: int = 6           # each cross-encoder
    use_hires: bool = True         # False: the CROMA baseline (no E_hires, no second cross-encoder)
    decoder_dim: int = 512
    decoder_depth: int = 1
    decoder_heads: int = 8
    mask_ratio: float = 0.75       # fraction of low-res patches masked (hires: the same ground)
    # True: S1 and S2 draw their own masks (CROMA); False: one mask shared by every modality.
    # Only without the hires encoder, whose mask is the low-res one expanded onto its grid.
    independent_masks: bool = False
    # "ground": bias = ground distance / L_ref (Scale-ALiBi); "patch": distance in patches of the
    # token's own grid, whatever the ground sample distance (CROMA's 2D-ALiBi).
    bias_units: str = "ground"
    s1_channels: int = 2
    s2_channels: int = 3
    hires_channels: int = 3
    # L_ref: metres per bias unit. None = ground size of one low-res patch at ref_zoom, ref_lat_deg
    # (lores_px pixels per tile), so on that grid the bias is CROMA's 2D-ALiBi in patches.
    # `curate train` sets ref_zoom to the training release's zoom and stores the resolved l_ref_m
    # in the checkpoint; a checkpoint without one (older runs) gets zoom 15, as it was trained.
    l_ref_m: float | None = None
    ref_zoom: int = 15             # the paper's training zoom (Table 1)
    ref_lat_deg: float = 38.0      # about the middle of CONUS, where NAIP (the data) lies
    temperature_init: float = 0.07
    max_logit_scale: float = 100.0  # clamp of 1/temperature (CLIP's)
    contrastive_weight: float = 1.0
    reconstruction_weight: float = 1.0
    attn_backend: str = "auto"     # "auto" | "flex" | "reference"

    def __post_init__(self) -> None:
        if self.bias_units not in ("ground", "patch"):
            raise ValueError(f"bias_units must be 'ground' or 'patch', got {self.bias_units!r}")
        if self.independent_masks and self.use_hires:
            raise ValueError("independent_masks needs use_hires=False: the hires mask is the "
                             "low-res mask expanded onto its grid")

    @property
    def reference_length_m(self) -> float:
        """L_ref in metres (see l_ref_m)."""
        if self.l_ref_m is not None:
            return float(self.l_ref_m)
        tile_m = ground_size_at_lat_m(self.ref_zoom, self.ref_lat_deg)
        return tile_m * self.patch_size / self.lores_px

    def to_dict(self) -> dict:
        """Plain dict (for JSON sidecars)."""
        return asdict(self)

    def resolved(self) -> ModelConfig:
        """This config with l_ref_m fixed to its value, as a checkpoint stores it."""
        return replace(self, l_ref_m=self.reference_length_m)


def config_from_dict(stored: dict) -> ModelConfig:
    """The ModelConfig a checkpoint's sidecar stored. Sidecars store every field, so an older one
    lacks only fields added since, whose defaults (shared mask, ground units) are how it trained;
    its l_ref_m is null with ref_zoom 15, which resolves to the L_ref it trained with."""
    known = {f.name for f in fields(ModelConfig)}
    return ModelConfig(**{k: v for k, v in stored.items() if k in known})


PRESETS: dict[str, ModelConfig] = {
    # 16 px patches and small widths: a 256 px tile is a 16x16 grid (hires 32x32), CPU-fast.
    "tiny": ModelConfig(name="tiny", patch_size=16, dim=64, heads=4, lores_depth=2, radar_depth=1,
                        hires_depth=2, cross_depth=1, decoder_dim=64, decoder_depth=1,
                        decoder_heads=4, mask_ratio=0.75),
    # ViT-B-like as the paper: 768 dim, 12 layers, 16 heads (its code), 8 px patches (256 px -> 32x32 grid,
    # 512 px NAIP -> 64x64 = 4096 tokens; the paper's "4092" is a typo for 64*64 = 4096).
    "base": ModelConfig(name="base"),
    "croma": ModelConfig(name="croma", use_hires=False, independent_masks=True, bias_units="patch"),
}


def get_config(name: str, **overrides) -> ModelConfig:
    """Preset by name ("tiny", "base", "croma"), with optional field overrides."""
    if name not in PRESETS:
        raise KeyError(f"unknown model config {name!r}; choose one of {sorted(PRESETS)}")
    return replace(PRESETS[name], **overrides)
