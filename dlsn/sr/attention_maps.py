"""Where a GLA layer looks: the attention weights of chosen queries over all positions (the paper's Fig. 4).

`attention_weights(layer, x, queries)` returns, for each query position, the weight every position
gets in the layer's attention output, merged over hash rounds exactly as the forward merges them:
per round, a softmax over the query's 3-chunk key window; rounds weighted by `softmax_r(lse_r)`.
A key position can appear several times in a window (padded slots, fewer than 3 chunks) and in
several rounds; its weights add. Hence, for every query `p`,

    out[p] = sum_j weights[p, j] * v[j],     y[p] = res_scale * out[p] + x[p]

with `out` the layer's attention output (before the residual). The weights are computed with the
reference backend's pieces (`dlsn.ops.reference`: hashing, stable sort, key windows, scores, round
merge) for the selected queries only:
memory is `O(Q * h * 3l * c)` for `Q` queries, plus the layer's own `[N, L, *]` embeddings.

`learned_term=True` scores as the layer does (its `similarity`: dot product plus learnable term, or
either alone); `learned_term=False` removes the learnable similarity: the scores are the dot products
alone, with the same buckets (hashing uses the queries only, so the windows do not change).

`dlsn attention` (`run`) draws them: the LR image with each query marked, its top-k
attended positions and a heat map, with and without the learnable term, side by side, above a
legend of the colour scale.
"""
from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from ..nn import GLA, gla_layers
from ..ops import reference
from .checkpoint import load_model
from .imageio import read_image
from .utils import label_font

__all__ = ["attention_weights", "capture_gla_inputs", "texture_queries", "add_arguments", "run", "LEGEND_TICKS"]


def _query_index(queries, length, device):
    queries = torch.as_tensor(queries, dtype=torch.long, device=device).reshape(-1)
    if queries.numel() == 0:
        raise ValueError("attention_weights: no query positions given")
    bad = queries[(queries < 0) | (queries >= length)]
    if bad.numel():
        raise ValueError(f"attention_weights: query position {int(bad[0])} is outside [0, {length}) "
                         f"(positions are y * W + x of the layer input)")
    return queries


@torch.no_grad()
def attention_weights(layer: GLA, x: torch.Tensor, queries, rotations=None, learned_term=True):
    """Attention weights `[N, Q, L]` of `queries` over all `L = H*W` positions of `x` for `layer`.

    layer: a `dlsn.GLA`. Without `rotations` it uses its own (`layer.rotations_for`), which are
        fixed per layer in eval mode only: in train mode pass the rotations the forward used.
    x: the layer's input `[N, C, H, W]`; queries: flat positions `y * W + x` (int sequence or tensor).
    learned_term: True scores as the layer's forward does; False with the dot product alone (the
        learnable term removed), same buckets.
    Returns weights in the embeddings' dtype; each row sums to 1.
    """
    if not isinstance(layer, GLA):
        raise TypeError(f"attention_weights needs a dlsn.GLA layer, got {type(layer).__name__}")
    layer._check_input(x, rotations)
    if rotations is None:
        if layer.training:
            raise ValueError("attention_weights: the layer is in train mode, where every forward draws new "
                             "rotations; call layer.eval() or pass the rotations used")
        rotations = layer.rotations_for(x.shape[2] * x.shape[3], x.device)
    n, length = x.shape[0], x.shape[2] * x.shape[3]
    queries = _query_index(queries, length, x.device)
    chunk = layer.chunk_size
    q, v, learned = layer.embed(x)
    perm, inv = reference.sort_permutation(reference.hash_codes(q, rotations), chunk)
    slot = inv[:, :, queries]                                   # [N, h, Q]: the query's slot per round
    windows = reference.window_positions(perm, chunk)           # [N, h, nC, 3l]
    key_pos = windows.gather(2, (slot // chunk).unsqueeze(-1).expand(-1, -1, -1, windows.shape[-1]))
    keys = reference.gather_rows(reference.normalized_keys(q), key_pos)   # [N, h, Q, 3l, c]
    if learned_term:
        # The learned term of the KEY at the query's offset i within its chunk, read straight from the [N, L, l] rows.
        offset = (slot % chunk).unsqueeze(-1)
        terms = learned.reshape(n, -1).gather(1, (key_pos * chunk + offset).reshape(n, -1)).reshape(key_pos.shape)
        # A layer with similarity="learned" attends with the learnable term alone.
        dot_q = layer.attention_queries(q)
    else:
        terms, dot_q = torch.zeros(key_pos.shape, dtype=q.dtype, device=x.device), q
    query_rows = dot_q[:, queries].unsqueeze(1).unsqueeze(-2)   # [N, 1, Q, 1, c]
    scores = reference.window_scores(query_rows, keys, terms.unsqueeze(-2)).squeeze(-2)   # [N, h, Q, 3l]
    merged = torch.softmax(scores, dim=-1) * reference.merge_weights(torch.logsumexp(scores, dim=-1)).unsqueeze(-1)
    h, q_count, width = key_pos.shape[1:]
    weights = torch.zeros(n, q_count, length, dtype=merged.dtype, device=x.device)
    weights.scatter_add_(2, key_pos.transpose(1, 2).reshape(n, q_count, h * width),
                         merged.transpose(1, 2).reshape(n, q_count, h * width))
    return weights


def capture_gla_inputs(model, x, layer_indices):
    """Run `model(x)` (no grad) and return `({index: layer input}, output)` for the chosen GLA layers,
    captured by forward hooks."""
    layers = gla_layers(model)
    captured = {}
    handles = [layers[index].register_forward_hook(
        lambda module, inputs, output, index=index: captured.__setitem__(index, inputs[0].detach()))
        for index in layer_indices]
    try:
        with torch.no_grad():
            output = model(x)
    finally:
        for handle in handles:
            handle.remove()
    return captured, output


def texture_queries(image, count=3, border=4):
    """`count` high-texture positions `(x, y)` of `image` [3, H, W]: largest local standard deviation
    of the luma over 7x7, at least a sixth of the image side apart, `border` pixels from the edges."""
    luma = (0.299 * image[0] + 0.587 * image[1] + 0.114 * image[2])[None, None].float()
    mean = F.avg_pool2d(luma, 7, stride=1, padding=3, count_include_pad=False)
    sq_mean = F.avg_pool2d(luma * luma, 7, stride=1, padding=3, count_include_pad=False)
    texture = (sq_mean - mean * mean).clamp_min(0)[0, 0]
    height, width = texture.shape
    border = min(border, (height - 1) // 2, (width - 1) // 2)
    if border:
        texture[:border], texture[-border:], texture[:, :border], texture[:, -border:] = -1, -1, -1, -1
    spacing = max(height, width) / 6
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    picked = []
    for _ in range(min(count, height * width)):
        flat = int(texture.argmax())
        y, x = divmod(flat, width)
        picked.append((x, y))
        texture[(ys - y) ** 2 + (xs - x) ** 2 < spacing ** 2] = -2
    return picked


# ---------------------------------------------------------------------------------------------
# `dlsn attention`

def _parse_query(text):
    try:
        x, y = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected X,Y (integer LR pixel coordinates), got {text!r}") from None
    return x, y


def _parse_layer(text):
    if text == "all":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a GLA layer index or 'all', got {text!r}") from None


def add_arguments(parser):
    """Arguments of ``dlsn attention``."""
    parser.add_argument("--checkpoint", required=True, metavar="CKPT",
                        help="a model checkpoint (DLSN or another architecture with GLA layers)")
    parser.add_argument("image", metavar="IMAGE", help="the LR input image")
    parser.add_argument("--layer", type=_parse_layer, default=0, metavar="K",
                        help="GLA layer index in module order (0 = first), or 'all' (default 0)")
    parser.add_argument("--query", type=_parse_query, nargs="+", action="extend", default=None, metavar="X,Y",
                        help="query pixel(s) in LR coordinates (x to the right, y down); default: "
                             "--auto-queries high-texture positions")
    parser.add_argument("--auto-queries", type=int, default=3, metavar="N",
                        help="number of queries picked automatically when --query is not given (default 3)")
    parser.add_argument("--top-k", type=int, default=10, metavar="K", help="attended positions marked (default 10)")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    parser.add_argument("-o", "--output", required=True, type=Path, help="output PNG")


# Piecewise-linear approximation of the 'inferno' colormap (dark -> purple -> orange -> yellow).
_HEAT_STOPS = torch.tensor([[0.0, 0.0, 0.02], [0.34, 0.06, 0.43], [0.73, 0.21, 0.33], [0.98, 0.55, 0.04],
                            [0.99, 1.0, 0.64]])


def _heat_colors(values):
    """values [H, W] in [0, 1] -> RGB [3, H, W]."""
    position = values.clamp(0, 1) * (len(_HEAT_STOPS) - 1)
    low = position.floor().long().clamp(max=len(_HEAT_STOPS) - 2)
    frac = (position - low).unsqueeze(-1)
    rgb = _HEAT_STOPS[low] * (1 - frac) + _HEAT_STOPS[low + 1] * frac
    return rgb.permute(2, 0, 1)


_TITLE_WIDTH = 300  # pixels: room for the two title lines next to small images


def _panel(image, weights, query, top_k, zoom, title):
    """One PIL panel: the image darkened, the heat map (sqrt-scaled weights) over it, top-k squares,
    the query as a cyan cross, and a title line above."""
    height, width = image.shape[-2:]
    grid = weights.reshape(height, width).float()
    heat = (grid / grid.max().clamp_min(1e-30)).sqrt()  # sqrt: the weights are peaked; show the tail too
    alpha = 0.25 + 0.75 * heat
    blended = image * 0.45 * (1 - alpha) + _heat_colors(heat) * alpha
    blended = blended.repeat_interleave(zoom, 1).repeat_interleave(zoom, 2)
    array = blended.clamp(0, 1).mul(255).round().byte().permute(1, 2, 0).numpy()
    title_height = 30
    canvas = Image.new("RGB", (max(width * zoom, _TITLE_WIDTH), height * zoom + title_height), "white")
    canvas.paste(Image.fromarray(array), (0, title_height))
    draw = ImageDraw.Draw(canvas)
    draw.multiline_text((3, 2), title, fill="black", spacing=2)
    order = torch.topk(grid.flatten(), min(top_k, grid.numel())).indices.tolist()
    half = max(2, zoom // 2 + 1)
    for flat in order:
        y, x = divmod(flat, width)
        cx, cy = x * zoom + zoom // 2, y * zoom + zoom // 2 + title_height
        draw.rectangle([cx - half, cy - half, cx + half, cy + half], outline=(0, 255, 0), width=2)
    qx, qy = query[0] * zoom + zoom // 2, query[1] * zoom + zoom // 2 + title_height
    arm = max(6, 2 * zoom)
    draw.line([qx - arm, qy, qx + arm, qy], fill=(0, 255, 255), width=3)
    draw.line([qx, qy - arm, qx, qy + arm], fill=(0, 255, 255), width=3)
    return canvas


LEGEND_TICKS = (0.0, 0.01, 0.1, 0.25, 0.5, 1.0)  # weight / the query's largest weight
_LEGEND_BAR = (14, 16)  # (top, height) of the colour bar in the legend, pixels


def _legend(width):
    """The colour scale under the sheet: the heat colours from no weight to the query's largest weight
    (square-root scaled, as the panels draw them), ticks at `LEGEND_TICKS`, and the marks' meaning."""
    bar_width = min(width - 40, 480)
    legend = Image.new("RGB", (width, 66), "white")
    draw, font = ImageDraw.Draw(legend), label_font(12)
    draw.text((20, 0), "attention weight / the query's largest weight (colour: square root)", fill="black", font=font)
    heat = torch.linspace(0, 1, bar_width).sqrt().expand(_LEGEND_BAR[1], -1)
    colours = _heat_colors(heat).mul(255).round().byte().permute(1, 2, 0).numpy()
    top = _LEGEND_BAR[0]
    legend.paste(Image.fromarray(colours), (20, top))
    for tick in LEGEND_TICKS:
        x = 20 + round(math.sqrt(tick) * (bar_width - 1))
        draw.line([x, top + _LEGEND_BAR[1], x, top + _LEGEND_BAR[1] + 3], fill="black")
        draw.text((x - 6, top + _LEGEND_BAR[1] + 4), f"{tick:g}", fill="black", font=font)
    draw.text((20, top + _LEGEND_BAR[1] + 20), "cyan cross: the query; green squares: its top-k attended positions",
              fill="black", font=font)
    return legend


def _top_summary(grid_weights, width, query, top_k):
    values, flat = torch.topk(grid_weights, min(top_k, grid_weights.numel()))
    ys, xs = flat // width, flat % width
    distance = ((xs - query[0]).float() ** 2 + (ys - query[1]).float() ** 2).sqrt()
    mean_distance = float((values * distance).sum() / values.sum())
    return list(zip(xs.tolist(), ys.tolist(), values.tolist())), mean_distance


def run(args) -> int:
    """``dlsn attention``: draws the attention maps into ``-o``; returns the exit status."""
    if args.top_k < 1:
        raise ValueError(f"--top-k must be positive, got {args.top_k}")
    if args.auto_queries < 1:
        raise ValueError(f"--auto-queries must be positive, got {args.auto_queries}")
    if args.output.suffix.lower() != ".png":
        raise ValueError(f"-o {str(args.output)!r}: the file name must end in .png")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {args.device}: CUDA is not available on this machine")
    image = read_image(args.image)
    height, width = image.shape[-2:]
    model = load_model(args.checkpoint, map_location="cpu").to(device).eval()
    layers = gla_layers(model)
    if not layers:
        raise ValueError(f"{args.checkpoint}: the model has no GLA layer")
    if args.layer == "all":
        indices = list(range(len(layers)))
    elif not 0 <= args.layer < len(layers):
        raise ValueError(f"--layer {args.layer} is out of range: the model has {len(layers)} GLA layer(s), "
                         f"indices 0..{len(layers) - 1}")
    else:
        indices = [args.layer]
    if args.query:
        for qx, qy in args.query:
            if not (0 <= qx < width and 0 <= qy < height):
                raise ValueError(f"--query {qx},{qy} is outside the {width}x{height} image "
                                 f"(x in 0..{width - 1}, y in 0..{height - 1})")
        queries = list(args.query)
    else:
        queries = texture_queries(image, args.auto_queries)
        print("queries (highest local texture): " + " ".join(f"{qx},{qy}" for qx, qy in queries))

    scale = getattr(model, "scale", 1)
    rgb_range = getattr(model, "rgb_range", 1.0)
    captured, _ = capture_gla_inputs(model, image[None].to(device) * rgb_range, indices)
    zoom = max(1, min(8, round(320 / max(height, width))))
    rows = []
    for index in indices:
        features = captured[index]
        if features.shape[-2:] != (height, width):
            raise ValueError(f"GLA layer {index} sees a {features.shape[-1]}x{features.shape[-2]} feature map, "
                             f"not the {width}x{height} input: maps are drawn in input coordinates only")
        positions = [qy * width + qx for qx, qy in queries]
        layer = layers[index]
        maps = {term: attention_weights(layer, features, positions, learned_term=term)[0].cpu()
                for term in (True, False)}
        for q_number, query in enumerate(queries):
            panels = []
            for term, label in ((True, "with learnable term"), (False, "dot product only")):
                top, mean_distance = _top_summary(maps[term][q_number], width, query, args.top_k)
                print(f"layer {index} query {query[0]},{query[1]} {label}: top-{args.top_k} at "
                      + " ".join(f"{x},{y}:{w:.3f}" for x, y, w in top)
                      + f"; weighted mean distance {mean_distance:.1f} px")
                title = (f"layer {index}, query ({query[0]},{query[1]}): {label}\n"
                         f"top-{args.top_k} mass {sum(w for *_, w in top):.2f}, mean distance {mean_distance:.1f} px")
                panels.append(_panel(image.cpu(), maps[term][q_number], query, args.top_k, zoom, title))
            rows.append(panels)

    gap = 8
    panel_w, panel_h = rows[0][0].size
    legend = _legend(2 * panel_w + gap)
    height = len(rows) * panel_h + (len(rows) - 1) * gap
    sheet = Image.new("RGB", (2 * panel_w + gap, height + gap + legend.height), "white")
    for r, panels in enumerate(rows):
        for c, panel in enumerate(panels):
            sheet.paste(panel, (c * (panel_w + gap), r * (panel_h + gap)))
    sheet.paste(legend, (0, height + gap))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(args.output)
    print(f"wrote {args.output} ({len(rows)} row(s): layer x query; left with the learnable term, right without; "
          f"x{scale} model)")
    return 0
