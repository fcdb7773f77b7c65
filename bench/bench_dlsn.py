"""DLSN end to end: one training step and x2 inference, reference vs fused (triton) backend.

Full run: the published x2 model (10 resgroups x 4 resblocks, 256 features, l=128, h=3); a training
step (Adam, L1 loss, batch 16 of 48x48 LR patches, float32 and bf16 autocast) and x2 inference of
one 256x256 image (no grad); time and peak memory; then the largest training batch that fits per
backend (doubling from 16 until out of memory or `--max-batch`, CUDA only).
`--smoke`: a 1-group, 1-block, 16-feature model, l=16, batch 2 of 8x8 on the CPU.
"""
import contextlib

import harness
import torch

from dlsn import DLSN

PAIRS = (("triton", "reference"),)


def train_step(model, optimizer, lr, hr, autocast):
    context = torch.autocast(lr.device.type, dtype=torch.bfloat16) if autocast else contextlib.nullcontext()

    def step():
        optimizer.zero_grad(set_to_none=True)
        with context:
            loss = torch.nn.functional.l1_loss(model(lr), hr)
        loss.backward()
        optimizer.step()
    return step


def model_flops(s_gla, n_groups, n_blocks, n_feats, scale, backward):
    """GLA layers + 3x3 convs of the body (2 per LFFB, 1 per group, 1 long skip), head, tail."""
    n_l = s_gla["N"] * s_gla["L"]
    conv = 2 * 9 * n_feats * n_feats * n_l
    body = n_groups * (2 * n_blocks + 1) + 1
    tail = 2 * 9 * n_feats * 4 * n_feats * n_l + 2 * 9 * n_feats * 3 * n_l * scale * scale
    head = 2 * 9 * 3 * n_feats * n_l
    per_layer = harness.layer_flops(s_gla, backward)
    return n_groups * per_layer + (body * conv + tail + head) * (3 if backward else 1)


def largest_batch(build, device, size, start, limit):
    """Largest batch (doubling from `start`) whose training step runs; None where even `start` fails."""
    best, batch = None, start
    while batch <= limit:
        try:
            model = build()
            optimizer = torch.optim.Adam(model.parameters())
            lr = torch.rand(batch, 3, size, size, device=device)
            hr = torch.rand(batch, 3, 2 * size, 2 * size, device=device)
            train_step(model, optimizer, lr, hr, False)()
            torch.cuda.synchronize(device)
            best = batch
        except Exception as error:  # OOM ends the search; anything else is reported
            if not harness.is_oom(error):
                raise
            break
        finally:
            model = optimizer = lr = hr = None
            torch.cuda.empty_cache()
        batch *= 2
    return best


def main(argv=None):
    args = harness.parse_args(__doc__.splitlines()[0], argv)
    device = harness.select_device(args)
    recorder = harness.Recorder("bench_dlsn", args, device, PAIRS)
    if args.smoke:
        config = dict(n_resgroups=1, n_resblocks=1, n_feats=16, chunk_size=16)
        batch, patch, infer = 2, 8, 8
    else:
        config = dict(n_resgroups=10, n_resblocks=4, n_feats=256, chunk_size=128)
        batch, patch, infer = 16, 48, 256
    feats = config["n_feats"]
    ready, ready_reason = harness.interpreter_ready(device)
    fits = {}
    for backend in ("reference", "triton"):
        provider = backend
        if backend == "triton" and not ready:
            for case in ("train-step", "infer-x2"):
                recorder.skip(case, "", provider, torch.float32, ready_reason)
            continue

        def build():
            torch.manual_seed(0)
            return DLSN(scale=2, backend=backend, **config).to(device)
        model = build()
        weight_bytes = sum(p.numel() * 4 for p in model.parameters())
        optimizer = torch.optim.Adam(model.parameters())
        lr = torch.rand(batch, 3, patch, patch, device=device)
        hr = torch.rand(batch, 3, 2 * patch, 2 * patch, device=device)
        s = harness.gla_shape(batch, patch, patch, feats, chunk=config["chunk_size"])
        shape = f"batch {batch} {patch}x{patch} -> x2, {config['n_resgroups']}x{config['n_resblocks']}x{feats}"
        for autocast in (False, True):
            dtype = torch.bfloat16 if autocast else torch.float32
            model.train()
            recorder.measure("train-step", shape, provider, dtype, train_step(model, optimizer, lr, hr, autocast),
                             model_flops(s, config["n_resgroups"], config["n_resblocks"], feats, 2, True),
                             4 * weight_bytes)  # weights, gradients and two Adam moments touched once
        model.eval()
        image = torch.rand(1, 3, infer, infer, device=device)
        s = harness.gla_shape(1, infer, infer, feats, chunk=config["chunk_size"])
        for autocast in (False, True):
            dtype = torch.bfloat16 if autocast else torch.float32
            context = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext

            def infer_call():
                with torch.no_grad(), context():
                    model(image)
            recorder.measure("infer-x2", f"1x3x{infer}x{infer} -> x2", provider, dtype, infer_call,
                             model_flops(s, config["n_resgroups"], config["n_resblocks"], feats, 2, False),
                             weight_bytes + 4 * 3 * infer * infer * 5)
        model = optimizer = None
        if device.type == "cuda":
            torch.cuda.empty_cache()
            try:
                fits[backend] = largest_batch(build, device, patch, batch, args.max_batch)
            except Exception as error:
                fits[backend] = f"search failed: {type(error).__name__}: {str(error).splitlines()[0][:160]}"
    lines = ["", "## Largest training batch that fits (float32, doubling search)", ""]
    if device.type != "cuda":
        lines.append("- not measured: the search needs CUDA out-of-memory errors (CPU smoke run).")
    for backend, best in fits.items():
        lines.append(f"- {backend}: {best if best is not None else f'none (batch {batch} does not fit)'}"
                     f" (search capped at {args.max_batch})")
    recorder.write(PAIRS, lines)
    return recorder


if __name__ == "__main__":
    main()
