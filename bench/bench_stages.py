"""Stage breakdown of the GLA core: hash, sort, attention, scatter-back, fc (forward) and the fused
attention backward; the counting sort against torch.sort / torch.argsort on the same codes.

Full run: the training shape (batch 16, 48x48, C=256, c=64, l=128, h=3) and 256x256 (batch 1),
float32 and bfloat16 embeddings. `--smoke`: tiny shapes on the CPU (Triton under TRITON_INTERPRET=1).

Every stage runs on the same inputs for each provider: `reference` (dlsn.ops.reference stage functions),
`triton` (dlsn.ops.fused stage functions; scatter-back from the extension, dlsn.ops.scatter; the
backward is the custom op torch.ops.dlsn.gla_attention_bwd that dlsn.ops.fused registers),
`torch.sort` / `torch.argsort` (stable, on the hash codes; sort only).
"""
import harness
import torch

from dlsn import GLA
from dlsn.ops import reference

PAIRS = (("triton", "reference"), ("triton", "torch.sort"), ("triton", "torch.argsort"))


def scatter_stage(device):
    """`dlsn.ops.scatter.scatter_back` where the extension runs on `device`, else (None, why not)."""
    from dlsn.ops.scatter import scatter_back
    stats = torch.zeros(1, 1, 1, device=device)
    try:
        scatter_back(torch.zeros(1, 1, 1, 1, device=device), stats, stats + 1, stats.to(torch.int32),
                     torch.zeros(1, 1, 1, 1, device=device), 1.0)
    except RuntimeError as error:
        return None, str(error).splitlines()[0]
    return scatter_back, ""


def main(argv=None):
    args = harness.parse_args(__doc__.splitlines()[0], argv)
    device = harness.select_device(args)
    recorder = harness.Recorder("bench_stages", args, device, PAIRS)
    if args.smoke:
        channels, chunk, cases = 32, 16, [(1, 8, 8)]
        dtypes = (torch.float32,)
    else:
        channels, chunk, cases = 256, 128, [(16, 48, 48), (1, 256, 256)]
        dtypes = (torch.float32, torch.bfloat16)
    fused, fused_reason = harness.fused_ops(device)
    scatter_back, scatter_reason = scatter_stage(device)
    torch.manual_seed(0)
    layer = GLA(channels, chunk_size=chunk, backend="reference").to(device).eval()
    for batch, height, width in cases:
        s = harness.gla_shape(batch, height, width, channels, chunk=chunk)
        shape = harness.shape_text(s)
        x32 = torch.randn(batch, channels, height, width, device=device)
        rotations = layer.rotations_for(height * width, device)
        with torch.no_grad():
            q32, v32, learned32 = layer.embed(x32)
            learned_rows = layer.conv_assembly_fc(x32).flatten(2).transpose(1, 2).contiguous()
        codes = reference.hash_codes(q32, rotations).to(torch.int32)
        perm_ref, inv_ref = reference.sort_permutation(codes.long(), chunk)
        perm, inv = perm_ref.to(torch.int32).contiguous(), inv_ref.to(torch.int32).contiguous()
        n_l = s["N"] * s["L"]
        for dtype in dtypes:
            elem = harness.ELEMENT_BYTES[dtype]
            q, v, learned, x = (t.to(dtype).contiguous() for t in (q32, v32, learned32, x32))
            rec = recorder.measure
            with torch.no_grad():
                # hash: read q, write int32 codes
                hb = elem * n_l * s["c"] + 4 * s["N"] * s["h"] * s["L"]
                rec("hash", shape, "reference", dtype, lambda: reference.hash_codes(q, rotations),
                    harness.hash_flops(s), hb)
                if fused:
                    rec("hash", shape, "triton", dtype, lambda: fused.triton_hash(q, rotations), harness.hash_flops(s), hb)
                else:
                    recorder.skip("hash", shape, "triton", dtype, fused_reason)
                # sort: read codes, write perm and inv (int32)
                sb = 4 * s["N"] * s["h"] * (2 * s["L"] + s["L"] + (-s["L"]) % chunk)
                rec("sort", shape, "reference", dtype, lambda: reference.sort_permutation(codes, chunk), 0, sb)
                rec("sort", shape, "torch.sort", dtype, lambda: torch.sort(codes, dim=-1, stable=True), 0, sb)
                rec("sort", shape, "torch.argsort", dtype, lambda: torch.argsort(codes, dim=-1, stable=True), 0, sb)
                if fused:
                    rec("sort", shape, "triton", dtype,
                        lambda: fused.triton_sort(codes, s["b"], chunk, check_range=False), 0, sb)
                else:
                    recorder.skip("sort", shape, "triton", dtype, fused_reason)
                # attention: read q, v, learned, perm; write O [N,h,L,C] and lse
                ab = elem * n_l * (s["c"] + s["C"] + s["l"]) + elem * s["N"] * s["h"] * s["L"] * s["C"] \
                    + 4 * s["N"] * s["h"] * s["L"] * 2
                rec("attention", shape, "reference", dtype,
                    lambda: reference.window_attention(q, v, learned, perm_ref, chunk), harness.attention_flops(s), ab)
                if fused:
                    rec("attention", shape, "triton", dtype,
                        lambda: fused.triton_window_attention(q, v, learned, perm, chunk, check_range=False),
                        harness.attention_flops(s), ab)
                else:
                    recorder.skip("attention", shape, "triton", dtype, fused_reason)
                # scatter-back: read O, lse, inv, x; write y
                O = torch.randn(s["N"], s["h"], s["L"], s["C"], device=device, dtype=dtype)
                lse = torch.randn(s["N"], s["h"], s["L"], device=device)
                cb = elem * s["N"] * s["L"] * s["C"] * (s["h"] + 2) + 8 * s["N"] * s["h"] * s["L"]

                def reference_merge():
                    out, _ = reference.scatter_back(O, lse, inv_ref)
                    return out.to(dtype).transpose(1, 2).reshape(x.shape) + x
                rec("scatter-back", shape, "reference", dtype, reference_merge, 0, cb)
                if scatter_back:
                    rec("scatter-back", shape, "triton", dtype,
                        lambda: scatter_back(O, lse, torch.ones_like(lse), inv, x, 1.0), 0, cb)
                else:
                    recorder.skip("scatter-back", shape, "triton", dtype, scatter_reason)
                # fc: Linear(C->l), ReLU, Linear(l->l) once per position (shared by every provider)
                fc = layer.fc
                fb = elem * n_l * (s["C"] + s["l"])
                rows = learned_rows.to(dtype)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
                    rec("fc", shape, "reference", dtype, lambda: fc(rows),
                        2 * n_l * (s["C"] * s["l"] + s["l"] * s["l"]), fb)
            # attention backward (fused): dq, dv, dlearned from dy
            if fused:
                fwd_op, bwd_op = torch.ops.dlsn.gla_attention_fwd, torch.ops.dlsn.gla_attention_bwd
                with torch.no_grad():
                    y, out, lse_max, lse_sum = fwd_op(q, v, learned, perm, inv, x, chunk, 1.0, "ieee")
                dy = torch.randn_like(y)
                bb = elem * n_l * (2 * s["C"] + s["c"] + s["C"] + s["l"]) * 2 + 4 * n_l
                rec("attention-bwd", shape, "triton", dtype,
                    lambda: bwd_op(dy, q, v, learned, perm, inv, out, lse_max, lse_sum, chunk, 1.0, "ieee"),
                    int(2.5 * harness.attention_flops(s)), bb)
            else:
                recorder.skip("attention-bwd", shape, "triton", dtype, fused_reason)
            qg, vg, learned_g = (t.detach().clone().requires_grad_(True) for t in (q, v, learned))

            def reference_bwd():
                O_r, lse_r = reference.window_attention(qg, vg, learned_g, perm_ref, chunk)
                out_r, _ = reference.scatter_back(O_r, lse_r, inv_ref)
                out_r.backward(torch.ones_like(out_r))
            rec("attention-bwd", shape, "reference", dtype, reference_bwd,
                int(3.5 * harness.attention_flops(s)), None)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    recorder.notes.append("attention-bwd reference rows time forward+backward of the reference attention "
                          "and round merge (autograd needs the forward); triton rows time the backward op alone.")
    recorder.write(PAIRS)
    return recorder


if __name__ == "__main__":
    main()
