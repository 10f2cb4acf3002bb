"""Label-free recovery block by block: each block of the pruned model learns to reproduce the
unpruned model's output at the block's end (PyTorch, the optional ``[train]`` extra).

``blockwise(original, pruned, kept, samples, config)`` cleans both graphs (BatchNorm folded) and
turns them into modules through the shared op table (``converters.torch_graph``). The student
graph is cut into blocks at *cut points*: tensors that are, in both graphs, the only value still
needed after the node producing them (the end of an inverted-residual block, after its residual
Add) and where teacher and student can be compared: equal shapes, or the student's tensor holds a
subset of the teacher's channels (``kept``: the teacher's tensor is then restricted to them). A
block closes at the first such point after ``layers_per_block`` trainable layers; the last block
runs to the graph outputs and is matched on the logits (KL divergence, as ``distill``).

Sequentially, block by block:
- the block's inputs are cached once for all images, computed by the already-recovered student
  blocks before it (so its training corrects the errors it actually receives), its targets by
  the unpruned teacher's same span on the teacher's own inputs; caches are stored in
  ``cache_dtype`` (float16 by default: halves the memory; the chain of teacher spans therefore
  runs on float16-rounded inputs) and widened to float32 per batch;
- only the block's weights train (Adam with a step relative to each tensor's RMS, cosine decay,
  ``epochs`` passes over the cached images, shuffled by ``seed``), loss = relative squared error
  to the teacher's tensor (intermediate blocks) or KL of the logits (last block);
- large feature maps train on random crops (``crop`` of the side, one window per batch, on the
  block's stride grid): the loss covers only the part of the crop's output that equals the whole
  map's (a margin from the convolutions' reach is left out at cut edges), checked on a probe image
  per block, so a block with a global op (squeeze-excitation pooling) trains on whole maps;
- a held-out share of the images (``holdout``) measures the block's error before and after; a
  block that got worse there is restored.
The time budget is shared among blocks in proportion to their MACs (the forward passes that fill
the caches of later blocks are reserved from it); a block past its share stops early, cooling
its learning rate on elapsed time. Finally the whole student's held-out KL divergence to the
teacher is compared with the one before recovery; if it rose, every weight is restored.
No data augmentation (the caches hold one view per image). Deterministic for a ``seed`` on a
given machine and thread count while each block's pace fits its share of the time budget
(``distill.schedule_fraction``; the report's ``followed_clock`` says when it did not).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from edgeinfer.errors import EdgeInferError
from edgeinfer.progress import Progress

from ..clean import clean_model
from .config_checks import integer_at_least
from .distill import _cpu, _logit_inputs, _logit_loss, schedule_fraction, set_cosine_lr, train_step
from .flops import layer_macs
from .graph import GraphView, infer_shapes
from .runner import progress

CACHE_DTYPES = ("float16", "float32")


@dataclass
class BlockwiseConfig:
    """Knobs of block-wise recovery (defaults: ~10 min for MobileNetV2 at 224 px on 2 cores)."""

    time_budget: float | None = 600.0     # seconds for the whole recovery; None = no limit
    epochs: float = 10.0                  # passes over the cached images per block, at most
    batch: int = 16
    lr: float = 1e-3                      # with relative_lr: the step as a fraction of each tensor's RMS
    relative_lr: bool = True
    layers_per_block: int = 3             # trainable layers (Conv/Gemm/MatMul) before a cut point closes a block
    crop: float = 0.5                     # train on random crops of this side fraction of a block's feature maps (1 = whole)
    min_crop: int = 16                    # ... never smaller than this many pixels (smaller maps train whole)
    cache_dtype: str = "float16"
    holdout: float = 0.1                  # images kept out of training to check each block (none below 20 images)
    seed: int = 0
    threads: int | None = None            # torch intra-op threads (None = torch's default)

    def validate(self) -> "BlockwiseConfig":
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float)) and self.time_budget > 0):
            raise EdgeInferError(f"blockwise time budget must be > 0 seconds, got {self.time_budget!r}")
        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise EdgeInferError(f"blockwise epochs must be > 0, got {self.epochs!r}")
        for name in ("batch", "layers_per_block"):
            integer_at_least("blockwise", name, getattr(self, name), 1)
        if self.cache_dtype not in CACHE_DTYPES:
            raise EdgeInferError(f"blockwise cache_dtype must be one of {', '.join(CACHE_DTYPES)}, got {self.cache_dtype!r}")
        if not (isinstance(self.crop, (int, float)) and 0.0 < self.crop <= 1.0):
            raise EdgeInferError(f"blockwise crop must be in (0, 1], got {self.crop!r}")
        integer_at_least("blockwise", "min_crop", self.min_crop, 1)
        if not (isinstance(self.holdout, (int, float)) and 0.0 <= self.holdout < 0.5):
            raise EdgeInferError(f"blockwise holdout must be in [0, 0.5), got {self.holdout!r}")
        return self


@dataclass
class Block:
    """A span of the student graph (``nodes[s_span]``) and the teacher's matching span."""

    s_span: tuple[int, int]
    t_span: tuple[int, int]
    inp: str                                   # the tensor that enters the block (same name in both graphs)
    outs: list[str]                            # the tensors matched at its end
    sel: dict[str, np.ndarray] = field(default_factory=dict)   # teacher channels the student kept, per out
    params: list[int] = field(default_factory=list)            # indices into the student's parameters
    macs: int = 0
    last: bool = False                         # ends at the graph outputs: matched on logits
    crop: tuple[int, int, int] | None = None   # (input crop side, stride, output margin) when trained on crops


def _reach(nodes: list[onnx.NodeProto]) -> tuple[int, int]:
    """(total stride, receptive radius in input pixels) of a chain of Conv/pool nodes."""
    from .graph import attr
    stride, radius = 1, 0
    for n in nodes:
        if n.op_type in ("Conv", "MaxPool", "AveragePool"):
            k = list(attr(n, "kernel_shape", [1, 1]) or [1, 1])
            d = list(attr(n, "dilations", [1] * len(k)))
            radius += max((kk // 2) * dd for kk, dd in zip(k, d)) * stride
            stride *= max(attr(n, "strides", [1] * len(k)))
    return stride, radius


def crop_plan(blk: Block, nodes: list[onnx.NodeProto], in_shape, out_shape, crop: float,
              min_crop: int, check) -> tuple[int, int, int] | None:
    """(input crop side, stride, output margin) for training ``blk`` on crops, or None (whole maps).

    A crop's output matches the whole map's away from its cut edges (``margin`` output pixels,
    from the convolutions' reach); ``check(side, stride, margin)`` confirms it on a probe image,
    so a block with a global op (pooling over the map, attention) trains on whole maps."""
    if blk.last or len(in_shape) != 4 or len(out_shape) != 4 or crop >= 1.0:
        return None
    h, w = in_shape[2:]
    stride, radius = _reach(nodes[blk.s_span[0]:blk.s_span[1]])
    if h % stride or w % stride or (h // stride, w // stride) != tuple(out_shape[2:]):
        return None
    margin = -(-radius // stride) + 1
    side = max(min_crop, int(round(min(h, w) * crop)))
    side -= side % stride
    if side >= min(h, w) or side // stride <= 2 * margin + 1:
        return None
    return (side, stride, margin) if check(side, stride, margin) else None


def cut_points(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor -> index of its producer, for tensors that are the only value still needed after it
    (every later node depends on the graph input through that tensor alone)."""
    g = model.graph
    inits = {i.name for i in g.initializer}
    last_use: dict[str, int] = {}
    for i, n in enumerate(g.node):
        for t in n.input:
            if t and t not in inits:
                last_use[t] = i
    for o in g.output:
        last_use[o.name] = len(g.node)
    live = {g.input[0].name}
    out = {}
    for i, n in enumerate(g.node):
        live |= {t for t in n.output if t}
        live = {t for t in live if last_use.get(t, -1) > i}
        if len(live) == 1 and next(iter(live)) in n.output:
            out[next(iter(live))] = i
    return out


def _trainable_weights(node: onnx.NodeProto, names: dict[str, int]) -> list[int]:
    from ..torch_graph import TRAINABLE_INPUTS
    return [names[node.input[i]] for i in TRAINABLE_INPUTS.get(node.op_type, ())
            if i < len(node.input) and node.input[i] in names]


def plan_blocks(student: onnx.ModelProto, teacher: onnx.ModelProto, param_names: list[str],
                shapes_s: dict[str, tuple], shapes_t: dict[str, tuple], kept: dict[str, np.ndarray],
                layers_per_block: int) -> list[Block]:
    """Cut the student into blocks at cut points shared with the teacher where both can be compared."""
    s_cut, t_cut = cut_points(student), cut_points(teacher)
    at = {i: t for t, i in s_cut.items()}
    index = {n: k for k, n in enumerate(param_names)}
    view = GraphView(infer_shapes(student))
    nodes = list(student.graph.node)

    def match(name: str) -> tuple[bool, np.ndarray | None]:
        s, t = shapes_s.get(name), shapes_t.get(name)
        if name not in t_cut or s is None or t is None or len(s) != len(t) or len(s) < 2:
            return False, None
        if s == t:
            return True, None
        sel = kept.get(name)
        ok = sel is not None and len(sel) == s[1] and s[2:] == t[2:] and int(np.max(sel)) < t[1]
        return ok, (np.asarray(sel, np.int64) if ok else None)

    blocks: list[Block] = []
    start, t_start, inp = 0, 0, student.graph.input[0].name
    params: list[int] = []
    macs = layers = 0
    for i, nd in enumerate(nodes):
        w = _trainable_weights(nd, index)
        params += [k for k in w if k not in params]
        macs += layer_macs(view, nd) or 0
        layers += bool(w)
        name = at.get(i)
        if name is None or layers < layers_per_block or i == len(nodes) - 1:
            continue
        ok, sel = match(name)
        if not ok:
            continue
        blocks.append(Block((start, i + 1), (t_start, t_cut[name] + 1), inp, [name],
                            {name: sel} if sel is not None else {}, params, macs))
        start, t_start, inp, params, macs, layers = i + 1, t_cut[name] + 1, name, [], 0, 0
    if start < len(nodes) and params:
        outs = sorted(set(_logit_inputs(student).values()))
        blocks.append(Block((start, len(nodes)), (t_start, len(teacher.graph.node)), inp, outs, {}, params, macs,
                            last=True))
    return blocks


def window(y0: int, x0: int, plan: tuple[int, int, int], hw) -> tuple[tuple, tuple, tuple]:
    """(input crop, exact part of the crop's output, the same part in whole-map output coordinates)
    as index tuples for [N, C, H, W] tensors; edges on the map's border are exact."""
    side, stride, margin = plan
    ins, outs, full = [], [], []
    for o, n in ((y0, hw[0]), (x0, hw[1])):
        lo = margin if o > 0 else 0
        hi = margin if o + side < n else 0
        ins.append(slice(o, o + side))
        outs.append(slice(lo, side // stride - hi))
        full.append(slice(o // stride + lo, (o + side) // stride - hi))
    return ((Ellipsis, *ins), (Ellipsis, *outs), (Ellipsis, *full))


def _relative_error(s, t, energy: float):
    return ((s - t) ** 2).mean() / energy


def blockwise(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict[str, np.ndarray], samples: np.ndarray,
              config: BlockwiseConfig | None = None, progress_bar: bool = True) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Train ``pruned`` block by block to match ``original`` on ``samples``; returns (cleaned model, report)."""
    cfg = (config or BlockwiseConfig()).validate()
    from ..torch_graph import TorchGraph, torch
    import torch.nn.functional as F

    if len([i for i in pruned.graph.input if i.name not in {t.name for t in pruned.graph.initializer}]) != 1:
        raise EdgeInferError("blockwise recovery needs a model with one input; use --recover lsq or distill")
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0, cpu0 = time.perf_counter(), _cpu()
    deadline = t0 + cfg.time_budget if cfg.time_budget else None
    teacher_onnx, student_onnx = clean_model(original), clean_model(pruned)
    teacher, student = TorchGraph(teacher_onnx), TorchGraph(student_onnx)
    teacher = teacher.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    student = student.requires_grad_(False).to(memory_format=torch.channels_last)
    cache_dtype = getattr(torch, cfg.cache_dtype)
    x_all = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    with torch.no_grad():
        probe_s = student.run_nodes({student.input_name: x_all[:1]}, 0, len(student.nodes))
        probe_t = teacher.run_nodes({teacher.input_name: x_all[:1]}, 0, len(teacher.nodes))
    shape = lambda env: {k: tuple(v.shape) for k, v in env.items() if hasattr(v, "shape")}
    blocks = plan_blocks(student_onnx, teacher_onnx, student.param_names, shape(probe_s), shape(probe_t), kept,
                         cfg.layers_per_block)
    if not blocks:
        raise EdgeInferError("blockwise recovery found no block to train in this model; use --recover lsq or distill")
    t_logits, s_logits = _logit_inputs(teacher_onnx), _logit_inputs(student_onnx)
    for blk in blocks:
        in_shape, out_shape = tuple(probe_s[blk.inp].shape), tuple(probe_s[blk.outs[0]].shape)

        def exact(side, stride, margin, blk=blk, hw=in_shape[2:]):
            y0 = x0 = stride * ((min(hw) - side) // (2 * stride))
            src, part, whole = window(y0, x0, (side, stride, margin), hw)
            with torch.no_grad():
                y = student.run_nodes({blk.inp: probe_s[blk.inp][src]}, *blk.s_span)[blk.outs[0]][part]
            ref = probe_s[blk.outs[0]][whole]
            return tuple(y.shape) == tuple(ref.shape) and bool(torch.allclose(y, ref, rtol=1e-3, atol=1e-4 * float(ref.abs().max() + 1e-6)))
        blk.crop = crop_plan(blk, list(student_onnx.graph.node), in_shape, out_shape, cfg.crop, cfg.min_crop, exact)

    n_hold = int(round(cfg.holdout * len(x_all))) if len(x_all) >= 20 else 0
    perm = rng.permutation(len(x_all))
    n_train = len(x_all) - n_hold
    order_all = torch.from_numpy(np.concatenate([np.sort(perm[n_hold:]), np.sort(perm[:n_hold])]))
    x_all = x_all[order_all]                       # training images first, held-out ones last

    def held_out_kl() -> float | None:
        if not n_hold:
            return None
        with torch.no_grad():
            total = 0.0
            for i in range(n_train, len(x_all), cfg.batch):
                xb = x_all[i:i + cfg.batch]
                _, t_env = teacher.features(xb, sorted(set(t_logits.values())))
                _, s_env = student.features(xb, sorted(set(s_logits.values())))
                total += float(_logit_loss(F, t_logits, s_logits, t_env, s_env, 1.0)) * len(xb)
        return total / n_hold

    def run_span(module, span, inp, cache, outs, note_rate=True):
        """Forward ``span`` over every cached image (no gradient) -> {out: cache of ``cache_dtype``}."""
        res: dict[str, Any] = {}
        c0 = time.perf_counter()
        with torch.no_grad():
            for i in range(0, len(cache), 32):
                env = module.run_nodes({inp: cache[i:i + 32].float()}, *span)
                for o in outs:
                    v = env[o].to(cache_dtype)
                    if o not in res:
                        res[o] = torch.empty((len(cache),) + tuple(v.shape[1:]), dtype=cache_dtype)
                    res[o][i:i + len(v)] = v
        return res, time.perf_counter() - c0

    kl_before = held_out_kl()
    start_weights = {n: p.detach().clone() for n, p in zip(student.param_names, student.params)}
    s_in = t_in = x_all                                # the images stay float32; later caches are cache_dtype
    steps_per_epoch = max(1, math.ceil(n_train / cfg.batch))
    per_block = max(1, int(round(cfg.epochs * steps_per_epoch)))
    costs = [b.macs + 1 for b in blocks]
    fwd_rate = None                                    # seconds per (MAC x image) of the caching passes
    rows, notes, steps_total, stopped, followed_clock = [], [], 0, False, False
    peak_mb = 0.0
    progress(f"blockwise recovery: {len(blocks)} blocks, {n_train} images (+{n_hold} held out), "
             f"{cfg.epochs:g} epochs of {cfg.batch} per block, {cfg.cache_dtype} caches"
             + (f", time budget {cfg.time_budget:.0f} s" if cfg.time_budget else ""))
    with Progress("block-wise recovery", per_block * len(blocks), progress_bar, deadline=deadline) as bar:
        for b, blk in enumerate(blocks):
            targets, sec = run_span(teacher, blk.t_span, blk.inp, t_in,
                                    sorted(set(t_logits.values())) if blk.last else blk.outs)
            fwd_rate = sec / (costs[b] * len(x_all))
            if blk.last:
                t_next = None
                targets = {s_logits[o]: targets[t_logits[o]] for o in t_logits}
            else:
                t_next = targets[blk.outs[0]]
                targets = {o: (v.index_select(1, torch.from_numpy(blk.sel[o])) if o in blk.sel else v)
                           for o, v in targets.items()}
            peak_mb = max(peak_mb, sum(v.numel() * v.element_size() for v in (s_in, t_in, *targets.values())) / 2**20)
            energy = {o: max(float(v[:n_train].float().pow(2).mean()), 1e-12) for o, v in targets.items()}

            def loss_of(env, idx, part=None, whole=None) -> Any:
                if blk.last:
                    t_env = {o: targets[o][idx].float() for o in targets}
                    return _logit_loss(F, s_logits, s_logits, t_env, env, 1.0)
                if part is not None:
                    return sum(_relative_error(env[o][part], targets[o][idx][whole].float(), energy[o])
                               for o in targets) / len(targets)
                return sum(_relative_error(env[o], targets[o][idx].float(), energy[o]) for o in targets) / len(targets)

            def held() -> float | None:
                if not n_hold:
                    return None
                total = 0.0
                with torch.no_grad():
                    for i in range(n_train, len(x_all), cfg.batch):
                        idx = torch.arange(i, min(i + cfg.batch, len(x_all)))
                        env = student.run_nodes({blk.inp: s_in[idx].float()}, *blk.s_span)
                        total += float(loss_of(env, idx)) * len(idx)
                return total / n_hold

            share = None
            if deadline is not None:
                later = sum(costs[b + 1:])
                reserve = 2 * fwd_rate * later * len(x_all)
                share = max(0.0, deadline - time.perf_counter() - reserve) * costs[b] / sum(costs[b:])
            params = [student.params[k] for k in blk.params]
            saved = [p.detach().clone() for p in params]
            err_before = held()
            scales = [max(float(p.detach().pow(2).mean().sqrt()), 1e-3) if cfg.relative_lr else 1.0 for p in params]
            for p in params:
                p.requires_grad_(True)
            opt = torch.optim.Adam([{"params": [p], "lr": cfg.lr * k, "scale": k} for p, k in zip(params, scales)],
                                   lr=cfg.lr)
            tb0, losses, step = time.perf_counter(), [], 0
            order = rng.permutation(n_train)
            while step < per_block:
                frac, by_clock = schedule_fraction(step, per_block, time.perf_counter() - tb0, share)
                followed_clock |= by_clock
                if frac >= 1.0:
                    stopped = True
                    break
                set_cosine_lr(opt, cfg.lr, frac)
                pos = (step % steps_per_epoch) * cfg.batch
                if pos == 0 and step:
                    order = rng.permutation(n_train)
                idx = torch.from_numpy(np.sort(order[pos:pos + cfg.batch]))
                xb, part, whole = s_in[idx], None, None
                if blk.crop:                    # one random window per batch, on the stride grid
                    hw, (side, stride, _) = xb.shape[2:], blk.crop
                    y0, x0 = (stride * int(rng.integers(0, (n - side) // stride + 1)) for n in hw)
                    src, part, whole = window(y0, x0, blk.crop, hw)
                    xb = xb[src]
                xb = xb.float().contiguous(memory_format=torch.channels_last) if xb.dim() == 4 else xb.float()
                loss = loss_of(student.run_nodes({blk.inp: xb}, *blk.s_span), idx, part, whole)
                train_step(opt, loss, losses, bar)
                step += 1
            for p in params:
                p.requires_grad_(False)
            err_after = held() if losses else err_before
            reverted = err_before is not None and err_after is not None and err_after > err_before
            if reverted:
                with torch.no_grad():
                    for p, s in zip(params, saved):
                        p.copy_(s)
            steps_total += step
            name = blk.outs[0] if not blk.last else "logits"
            rows.append({"block": b, "ends_at": name, "crop": list(blk.crop) if blk.crop else None, "tensors": len(params), "macs": blk.macs, "steps": step,
                         "seconds": round(time.perf_counter() - tb0, 1), "narrowed_target": bool(blk.sel),
                         "loss_first": float(np.mean(losses[:5])) if losses else None,
                         "loss_last": float(np.mean(losses[-5:])) if losses else None,
                         "held_out_before": err_before, "held_out_after": err_after, "reverted": reverted})
            progress(f"block {b + 1}/{len(blocks)} -> {name}: {step} steps in {rows[-1]['seconds']:.0f} s, held-out "
                     + (f"{'KL' if blk.last else 'rel. error'} {err_before:.4f} -> {err_after:.4f}" if n_hold else "n/a")
                     + (" (worse: restored)" if reverted else ""))
            if not blk.last:
                s_next, _ = run_span(student, blk.s_span, blk.inp, s_in, blk.outs)
                s_in, t_in = s_next[blk.outs[0]], t_next
    kl_after = held_out_kl()
    reverted = kl_before is not None and kl_after is not None and kl_after > kl_before
    if reverted:
        with torch.no_grad():
            for n, p in zip(student.param_names, student.params):
                p.copy_(start_weights[n])
        notes.append(f"held-out KL rose {kl_before:.4f} -> {kl_after:.4f}: block-wise recovery undone")
    if stopped:
        notes.append("the time budget cut some blocks short")
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    trained = student.write_back(student_onnx)
    report = {"method": "blockwise", "blocks": len(blocks), "steps": steps_total, "images": int(n_train),
              "batch": cfg.batch, "epochs_per_block": cfg.epochs, "lr": cfg.lr, "relative_lr": cfg.relative_lr,
              "seconds": round(seconds, 1), "cpu_seconds": round(cpu, 1), "threads": int(torch.get_num_threads()),
              "time_budget": cfg.time_budget, "stopped_by_budget": stopped, "followed_clock": followed_clock,
              "seed": cfg.seed,
              "cache": {"dtype": cfg.cache_dtype, "peak_mb": round(peak_mb, 1)},
              "held_out": {"images": n_hold, "kl_before": kl_before, "kl_after": kl_after, "reverted": reverted},
              "per_block": rows, "notes": notes}
    progress(f"blockwise recovery: {steps_total} steps over {len(blocks)} blocks in {seconds:.0f} s (CPU {cpu:.0f} s)"
             + (f", held-out KL {kl_before:.4f} -> {kl_after:.4f} on {n_hold} images" if n_hold else ""))
    return trained, report
