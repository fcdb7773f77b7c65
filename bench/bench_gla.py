"""GLA layer forward and forward+backward: reference vs triton (fused) vs FlexAttention.

Full run: the training shape (batch 16, 48x48, C=256, c=64, l=128, h=3) forward and forward+backward,
and inference maps 64x64..512x512 (batch 1) forward; float32 and bf16 autocast.
`--smoke`: tiny shapes on the CPU (Triton under TRITON_INTERPRET=1).

Providers (the whole layer: embeddings + attention core, fixed eval rotations):
- reference: `dlsn.GLA(backend="reference")`, the pure-PyTorch path.
- triton: `layer.embed` + `dlsn.ops.fused.gla_attention` (forward, and forward+backward).
- flex: `layer.embed`, reference hash + sort, then `torch.nn.attention.flex_attention` on the sorted
  sequences (heads = rounds), a block mask for the 3-chunk window, a `score_mod` adding
  `learned[key, query slot in chunk]` (and log multiplicity of duplicated chunks when nC < 3), `scale=1`,
  the log-sum-exp (`return_aux`, or `return_lse` on older torch), then the reference round merge. Compiled with `torch.compile` on CUDA.
"""
import inspect
import warnings

import harness
import torch

from dlsn import GLA
from dlsn.ops import reference
from dlsn.kernels.constants import KEY_NORM_EPS

PAIRS = (("triton", "reference"), ("triton", "flex"))


def flex_available():
    try:
        from torch.nn.attention.flex_attention import BlockMask, flex_attention  # noqa: F401
        return True, ""
    except ImportError as error:
        return False, f"torch {torch.__version__} has no FlexAttention ({error})"


def sorted_rows(rows, perm):
    """rows [N, L, d] -> [N, h, Lp, d] in each round's sorted order (slot s holds rows[perm[n, r, s]])."""
    n_batch, n_hashes, padded = perm.shape
    index = perm.reshape(n_batch, n_hashes * padded, 1).expand(-1, -1, rows.shape[-1])
    return rows.gather(1, index).reshape(n_batch, n_hashes, padded, rows.shape[-1])


class FlexCore:
    """GLA attention core on FlexAttention; block masks cached per (N, h, Lp, l)."""

    def __init__(self, device, compiled=True):
        from torch.nn.attention.flex_attention import flex_attention
        compiled = compiled and device.type == "cuda"  # compiled flex on CPU has no return_lse
        self.compiled = compiled
        self.attend = torch.compile(flex_attention, dynamic=False) if compiled else flex_attention
        # A torch whose flex_attention takes `return_aux` deprecates `return_lse` (a FutureWarning on
        # every smoke run); older versions have only `return_lse`.
        self.aux_request = None
        if "return_aux" in inspect.signature(flex_attention).parameters:
            from torch.nn.attention.flex_attention import AuxRequest
            self.aux_request = AuxRequest(lse=True)
        self.masks = {}

    def _attend_with_lse(self, *args, **kwargs):
        """flex_attention's output and log-sum-exp, asked for as the installed torch wants it."""
        with warnings.catch_warnings():
            if not self.compiled:  # uncompiled on purpose (CPU); main() notes it once in the results
                warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
            if self.aux_request is None:
                return self.attend(*args, **kwargs, return_lse=True)
            out, aux = self.attend(*args, **kwargs, return_aux=self.aux_request)
        return out, aux.lse

    def window(self, padded, chunk, device):
        """BlockMask of the 3-chunk window, built from block indices (block = chunk; every window
        block is a full block), so its cost is O(nC^2) indices rather than a dense Lp x Lp mask."""
        key = (padded, chunk, str(device))
        if key not in self.masks:
            from torch.nn.attention.flex_attention import BlockMask
            n_chunks = padded // chunk
            multiplicity = torch.zeros(n_chunks, device=device)
            for offset in (0, 1, -1):  # the window is a multiset: nC < 3 repeats chunks
                multiplicity[offset % n_chunks] += 1
            allowed = multiplicity > 0
            log_mult = torch.log(multiplicity.clamp_min(1))
            distinct = sorted({offset % n_chunks for offset in (0, 1, -1)})
            rows = torch.arange(n_chunks, device=device)
            full_indices = torch.zeros(1, 1, n_chunks, n_chunks, dtype=torch.int32, device=device)
            for slot, offset in enumerate(distinct):
                full_indices[0, 0, :, slot] = ((rows + offset) % n_chunks).to(torch.int32)
            full_counts = torch.full((1, 1, n_chunks), len(distinct), dtype=torch.int32, device=device)
            empty_counts = torch.zeros_like(full_counts)

            def mask_mod(b, h, q_idx, kv_idx):  # used where blocks are not full, and by eager flex
                return allowed[(kv_idx // chunk - q_idx // chunk) % n_chunks]

            block = BlockMask.from_kv_blocks(empty_counts, torch.zeros_like(full_indices), full_counts, full_indices,
                                             BLOCK_SIZE=chunk, mask_mod=mask_mod, seq_lengths=(padded, padded))
            self.masks[key] = (block, log_mult, n_chunks)
        return self.masks[key]

    def __call__(self, q, v, learned, rotations, chunk, x, res_scale):
        codes = reference.hash_codes(q.detach(), rotations)
        perm, inv = reference.sort_permutation(codes, chunk)
        padded = perm.shape[2]
        length = q.shape[1]
        keys = q / q.norm(dim=-1, keepdim=True).clamp_min(KEY_NORM_EPS)
        q_s, k_s, v_s, f_s = (sorted_rows(t, perm) for t in (q, keys, v, learned))
        block, log_mult, n_chunks = self.window(padded, chunk, q.device)

        def score_mod(score, b, h, q_idx, kv_idx):
            return (score + f_s[b, h, kv_idx, q_idx % chunk]
                    + log_mult[(kv_idx // chunk - q_idx // chunk) % n_chunks])

        out, lse = self._attend_with_lse(q_s, k_s, v_s, score_mod=score_mod, block_mask=block, scale=1.0)
        merged, _ = reference.scatter_back(out[:, :, :length], lse[:, :, :length].float(), inv)
        n, channels, height, width = x.shape
        return merged.to(v.dtype).transpose(1, 2).reshape(n, channels, height, width) * res_scale + x


def check_flex(device, recorder):
    """Flex core vs reference core on a fresh tiny input (max relative error into the notes)."""
    for size in (4, 5, 12):  # nC = 1 and 2 (duplicated window chunks) and nC = 9
        torch.manual_seed(size)
        layer = GLA(32, chunk_size=16, backend="reference").to(device).eval()
        x = torch.randn(1, 32, size, size, device=device)
        rotations = layer.rotations_for(size * size, device)
        with torch.no_grad():
            q, v, learned = layer.embed(x)
            want = reference.gla_core(q.double(), v.double(), learned.double(), rotations.double(), 16, x.double(), 1.0)
            got = FlexCore(device, compiled=False)(q, v, learned, rotations, 16, x, 1.0)
        error = ((got.double() - want).norm() / want.norm()).item()
        n_chunks = -(-size * size // 16)
        block_rows = FlexCore(device, compiled=False).window(n_chunks * 16, 16, device)[0].to_dense()[0, 0].cpu()
        offsets = (torch.arange(n_chunks)[None, :] - torch.arange(n_chunks)[:, None]) % n_chunks
        window = (offsets == 0) | (offsets == 1) | (offsets == n_chunks - 1)
        if not torch.equal(block_rows.bool(), window):
            raise AssertionError(f"flex block mask is not the 3-chunk window for nC = {n_chunks}")
        recorder.notes.append(f"Flex core vs float64 reference, {size}x{size}, l=16: relative error {error:.2e}.")


def validate_flex(layer, x, rotations, flex):
    """Relative error of the (compiled) flex layer output against the reference layer at this shape."""
    with torch.no_grad():
        want = layer(x, rotations).double()
        q, v, learned = layer.embed(x)
        got = flex(q, v, learned, rotations, layer.chunk_size, x, layer.res_scale).double()
    return ((got - want).norm() / want.norm()).item()


def main(argv=None):
    args = harness.parse_args(__doc__.splitlines()[0], argv, flex_all=True)
    device = harness.select_device(args)
    recorder = harness.Recorder("bench_gla", args, device, PAIRS)
    if args.smoke:
        channels, chunk = 32, 16
        cases = [("train", 1, 8, 8, True)]
    else:
        channels, chunk = 256, 128
        cases = [("train", 16, 48, 48, True)] + [("infer", 1, s, s, False) for s in (64, 128, 256, 512)]
    flex_ok, flex_reason = flex_available()
    flex = FlexCore(device) if flex_ok else None
    if flex is not None and not flex.compiled:
        recorder.notes.append("flex on the CPU runs uncompiled: torch's unfused implementation, which "
                              "materialises the whole score matrix.")
    if flex_ok:
        try:
            check_flex(device, recorder)
        except Exception as error:  # a flex core that disagrees with the reference is not timed
            flex_ok, flex_reason = False, f"flex check against the reference failed: {type(error).__name__}: {error}"
            flex = None
            recorder.notes.append(flex_reason)
    torch.manual_seed(0)
    layer = GLA(channels, chunk_size=chunk, backend="reference").to(device).eval()
    weight_bytes = sum(p.numel() * 4 for p in layer.parameters())
    flex_checked = {}
    for name, batch, height, width, with_backward in cases:
        s = harness.gla_shape(batch, height, width, channels, chunk=chunk)
        x = torch.randn(batch, channels, height, width, device=device)
        rotations = layer.rotations_for(height * width, device)
        for autocast in (False, True):
            dtype = torch.bfloat16 if autocast else torch.float32
            elem = harness.ELEMENT_BYTES[dtype]
            for backward in ((False, True) if with_backward else (False,)):
                case = f"{name}-{'fwdbwd' if backward else 'fwd'}"
                xb = x.detach().clone().requires_grad_(backward)
                flops = harness.layer_flops(s, backward)
                min_bytes = harness.layer_min_bytes(s, elem, weight_bytes, backward)
                for provider in ("reference", "triton", "flex"):
                    core, reason = None, ""
                    if provider == "triton":
                        core, reason = harness.fused_gla_attention(device)
                    elif provider == "flex":
                        core, reason = (flex, "") if flex_ok else (None, flex_reason)
                        if core is not None and backward and device.type != "cuda":
                            core, reason = None, "FlexAttention has no backward on CPU"
                        if core is not None and not args.smoke and not args.flex_all and name == "infer" and height != 256:
                            core, reason = None, "flex runs at the training shape and 256x256 only (one compile per shape; --flex-all runs all)"
                    if provider == "flex" and core is not None and (name, height) not in flex_checked:
                        try:  # the compiled kernel that is timed must compute the same function
                            flex_checked[(name, height)] = validate_flex(layer, x, rotations, core)
                            recorder.notes.append(f"flex vs reference layer output, {harness.shape_text(s)}, "
                                                  f"float32: relative error {flex_checked[(name, height)]:.2e}")
                        except Exception as error:
                            flex_checked[(name, height)] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
                    check = flex_checked.get((name, height)) if provider == "flex" else None
                    if isinstance(check, str) or (check is not None and check > 1e-3):
                        core, reason = None, f"flex output check failed at this shape: {check}"
                    if provider != "reference" and core is None:
                        recorder.skip(case, harness.shape_text(s), provider, dtype, reason)
                        continue
                    call = harness.layer_call(provider, layer, xb, rotations, backward, autocast, core)
                    recorder.measure(case, harness.shape_text(s), provider, dtype, call, flops, min_bytes)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    recorder.write(PAIRS)
    return recorder


if __name__ == "__main__":
    main()
