"""The DLSN super-resolution network (docs/gla.md §6), state-dict compatible with the
published checkpoints."""
import torch
from torch import nn

from ..nn import GLA
from .blocks import DIV2K_RGB_MEAN, HashRounds, MeanShift, Upsampler, check_scale, default_conv
from .state_dict import unwrap_state_dict


class LFFB(nn.Module):
    """Conv3x3 - ReLU - Conv3x3 plus identity; keys `body.0.*`, `body.2.*`."""

    def __init__(self, n_feats):
        super().__init__()
        self.body = nn.Sequential(
            default_conv(n_feats, n_feats, 3), nn.ReLU(inplace=True), default_conv(n_feats, n_feats, 3)
        )

    def forward(self, x):
        return self.body(x) + x


class GLAFFM(nn.Module):
    """`n_resblocks` x LFFB -> GLA -> Conv3x3, output `body(x) * res_scale + x`.

    `local_fusion=False` drops the LFFBs (the paper's Table 1 ablation): GLA -> Conv3x3.
    """

    def __init__(self, n_feats, n_resblocks=4, reduction=4, chunk_size=128, n_hashes=3, res_scale=0.1,
                 backend="auto", eval_seed=0, fp32_precision=None, check_finite=False, similarity="both",
                 local_fusion=True):
        super().__init__()
        blocks = [LFFB(n_feats) for _ in range(n_resblocks if local_fusion else 0)]
        blocks.append(GLA(n_feats, reduction=reduction, chunk_size=chunk_size, n_hashes=n_hashes,
                          res_scale=1.0, backend=backend, eval_seed=eval_seed, fp32_precision=fp32_precision,
                          check_finite=check_finite, similarity=similarity))
        blocks.append(default_conv(n_feats, n_feats, 3))
        self.body = nn.Sequential(*blocks)
        self.res_scale = res_scale

    def forward(self, x):
        return self.body(x) * self.res_scale + x


class DLSN(HashRounds, nn.Module):
    """Deep Learnable Similarity Network for single-image super-resolution.

    `forward(x)`: `x` [N, n_colors, h, w] in [0, rgb_range] -> [N, n_colors, scale*h, scale*w].
    Defaults are the published hyper-parameters. Layer `i`'s GLA uses eval seed `i`; `backend`,
    `fp32_precision` and `check_finite` go to every GLA (see `dlsn.GLA`).
    `load_state_dict` accepts published checkpoints wrapped as `unwrap_state_dict` describes.
    The parameter `a` is unused, as in the published model, and kept for key compatibility.

    Ablation switches (defaults: the published network and state-dict keys): `similarity` of every
    GLA ("both", "dot", "learned", see `GLA`); `local_fusion=False` removes the local fusion blocks
    of every group; `n_hashes` hash rounds in training mode and `eval_n_hashes` (None: the same) in
    eval mode, switched by `train()`/`eval()`; `set_n_hashes` changes them on a built model.
    """

    def __init__(self, scale=2, n_resgroups=10, n_resblocks=4, n_feats=256, reduction=4, chunk_size=128,
                 n_hashes=3, res_scale=0.1, rgb_range=1.0, n_colors=3, backend="auto", fp32_precision=None,
                 check_finite=False, similarity="both", local_fusion=True, eval_n_hashes=None):
        super().__init__()
        self._init_hash_rounds(n_hashes, eval_n_hashes)
        check_scale("DLSN", scale)
        if n_colors != len(DIV2K_RGB_MEAN):
            raise ValueError(f"DLSN is defined for {len(DIV2K_RGB_MEAN)} colour channels, got n_colors={n_colors}")
        if n_feats % reduction:
            raise ValueError(f"DLSN: n_feats ({n_feats}) must be divisible by reduction ({reduction})")
        self.scale = scale
        self.rgb_range = rgb_range
        self.n_colors = n_colors
        self.a = nn.Parameter(torch.zeros(1))
        self.sub_mean = MeanShift(rgb_range, sign=-1)
        self.head = nn.Sequential(default_conv(n_colors, n_feats, 3))
        groups = [
            GLAFFM(n_feats, n_resblocks, reduction, chunk_size, n_hashes, res_scale, backend, eval_seed=index,
                   fp32_precision=fp32_precision, check_finite=check_finite, similarity=similarity,
                   local_fusion=local_fusion)
            for index in range(n_resgroups)
        ]
        self.body = nn.Sequential(*groups, default_conv(n_feats, n_feats, 3))
        self.tail = nn.Sequential(Upsampler(scale, n_feats), default_conv(n_feats, n_colors, 3))
        self.add_mean = MeanShift(rgb_range, sign=1)
        for name, module in self.named_modules():
            if isinstance(module, GLA):
                module.layer_name = f"DLSN.{name}"

    def forward(self, x):
        """Super-resolve a batch: `x` [N, n_colors, h, w] -> [N, n_colors, scale*h, scale*w].

        Args:
            x: floating-point images in [0, rgb_range] (float32, float16 or bfloat16, or float64; the
                parameters must have the same dtype, or run under `torch.autocast`), on the
                parameters' device. Any h, w >= 1.
        Returns:
            The upscaled batch in `x`'s dtype, not clamped to [0, rgb_range].

        Modes: in training mode every GLA layer draws fresh hashing rotations from torch's RNG on
        each call (as published); in eval mode layer `i` uses rotations drawn once from a CPU
        generator seeded with `i`, so the output is deterministic and the same on every device.
        Each GLA layer runs its `backend` ("auto": fused Triton kernels for CUDA inputs, else the
        pure-PyTorch reference). The convolutions pad with zeros; `dlsn.sr.inference.upscale_tensor`
        (used by `dlsn upscale`) pads the image itself so that its borders come out right.
        """
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"DLSN expects a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.n_colors:
            raise ValueError(f"DLSN expects x of shape [N, {self.n_colors}, H, W], got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"DLSN expects a floating-point x in [0, rgb_range], got dtype {x.dtype}")
        x = self.head(self.sub_mean(x))
        x = self.body(x) + x
        return self.add_mean(self.tail(x))

    def load_state_dict(self, state_dict, strict=True, assign=False):
        return super().load_state_dict(unwrap_state_dict(state_dict), strict=strict, assign=assign)
