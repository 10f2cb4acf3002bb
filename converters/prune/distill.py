"""Label-free recovery of a pruned model by distillation from the unpruned one (PyTorch, ``[train]``).

``distill(original, pruned, kept, samples, config)`` cleans both graphs (BatchNorm folded),
turns them into trainable modules (``converters.torch_graph``: the unpruned model is the frozen
teacher, the pruned one the student), and trains the student on the calibration images alone:

- loss: KL divergence between teacher and student class distributions for every 2-D output
  (``[N, K]`` logits; a Softmax output is matched on its input logits), a relative squared error
  for any other output, plus ``feature_weight`` times the relative squared error of the residual
  sums (``Add`` outputs) both graphs share, the teacher's tensors restricted to the kept channels;
- data: the calibration images (already preprocessed), each step a random resized crop (area
  ``crop_scale``) and a horizontal flip (``flip``), resized to ``train_size`` pixels; teacher
  and student see the same view; with ``mixup`` > 0 each view is blended with another image's view
  (weight drawn from Beta(mixup, mixup)) and the teacher is run on the blend, so teacher and student
  still see the same input ("function matching": a few hundred photos become unlimited distinct
  inputs; needs ``views`` 0, since the teacher runs per step);
- a student whose input is smaller than the images (``--prune-resolution``) sees each view
  resized to its size (antialiased bilinear), the teacher the view at full size;
- ``train="affine"`` trains only a per-output-channel scale of each weight and the biases (the
  folded BatchNorm's affine, as FixRes re-tunes BatchNorm for a new test resolution): a few
  thousand numbers instead of millions, which a few hundred images cannot overfit as easily;
- AdamW with a per-tensor step size ``lr`` x the tensor's RMS (``relative_lr``; BatchNorm folding
  leaves weights whose scales differ by orders of magnitude, and Adam's step does not follow the
  scale) and a cosine decay over ``epochs``, cut short by ``time_budget`` seconds (the
  schedule then follows elapsed time, so the run still ends at a low learning rate);
- 10 % of the images are held out (``holdout``): their KL to the teacher is measured after every
  epoch; the weights of the best epoch replace the last ones when its KL is clearly lower (by
  ``BEST_EPOCH_MARGIN``), and if the kept weights are worse than the start the run is undone;
- deterministic for a ``seed`` on a given machine and thread count while the run's pace fits its
  time budget (``schedule_fraction``; the report's ``followed_clock`` says when it did not).

The trained weights are written back into the cleaned pruned ONNX graph, which is returned.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from edgeinfer.errors import EdgeInferError
from edgeinfer.progress import Progress

from ..clean import clean_model
from .config_checks import integer_at_least
from .resolution import fixed_hw
from .runner import progress


SCHEDULE_SETTLE_STEPS = 10  # steps whose pace is measured before the clock may take over the schedule
BEST_EPOCH_MARGIN = 0.9   # an earlier epoch's weights replace the last ones only if its held-out KL is 10 % lower
                          # (a clear overfit; smaller differences on a few held-out images are noise)


@dataclass
class DistillConfig:
    """Knobs of the distillation run. Defaults: the best measured on MobileNetV2 with 720 photos
    (-35 % MACs at 192 px: held-out KL 0.218 -> 0.194, 12 epochs in ~4 min on 2 cores; a step of
    3e-4 or more, or 16 epochs of random crops, overfit and were undone)."""

    epochs: float = 12.0
    time_budget: float | None = 900.0     # seconds; None = no limit
    batch: int = 16
    lr: float = 1e-4                      # with relative_lr: the step as a fraction of each tensor's RMS
    relative_lr: bool = True
    weight_decay: float = 0.0
    train_size: int | None = None         # training resolution (None = the model's own)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    temperature: float = 1.0
    feature_weight: float = 0.0
    seed: int = 0
    threads: int | None = None            # torch intra-op threads (None = torch's default)
    holdout: float = 0.1                  # images kept out of training to check it helped (none below 20 images)
    views: int = 2                        # > 0: that many fixed views per image (whole, mirror, then random crops),
                                          # the teacher's logits on them computed once (no teacher pass per step)
    train: str = "all"                    # "all" weights, or "affine": per-channel weight scales + biases only
    mixup: float = 0.0                    # > 0: blend each view with another's, Beta(mixup, mixup) weight (views 0)

    def validate(self) -> "DistillConfig":
        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise EdgeInferError(f"distill epochs must be > 0, got {self.epochs!r}")
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float)) and self.time_budget > 0):
            raise EdgeInferError(f"distill time budget must be > 0 seconds, got {self.time_budget!r}")
        integer_at_least("distill", "batch", self.batch, 1)
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < 8):
            raise EdgeInferError(f"distill train_size must be an integer >= 8 pixels, got {self.train_size!r}")
        if not (isinstance(self.holdout, (int, float)) and 0.0 <= self.holdout < 0.5):
            raise EdgeInferError(f"distill holdout must be in [0, 0.5), got {self.holdout!r}")
        integer_at_least("distill", "views", self.views, 0)
        if self.train not in ("all", "affine"):
            raise EdgeInferError(f"distill train must be 'all' or 'affine', got {self.train!r}")
        if not (isinstance(self.mixup, (int, float)) and self.mixup >= 0):
            raise EdgeInferError(f"distill mixup must be >= 0 (0 = off), got {self.mixup!r}")
        if self.views and self.mixup:
            raise EdgeInferError("distill mixup needs the teacher run on each blend: set views 0")
        if self.views and self.feature_weight > 0:
            raise EdgeInferError("distill views caches the teacher's logits only: set feature_weight 0 or views 0")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise EdgeInferError(f"distill crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale!r}")
        return self


def final_pass_config(time_budget: float | None = 300.0) -> DistillConfig:
    """The end-to-end pass after block-wise recovery: KL on cached teacher logits of fixed views
    (whole image and its mirror: caching 4 views of 720 MobileNetV2 images took 169-279 s of a 300 s
    budget, measured), a small relative step (the blocks are already close)."""
    return DistillConfig(time_budget=time_budget, epochs=4.0, lr=1e-4, views=2, crop_scale=(0.5, 1.0), flip=True)


def _view_params(rng: np.random.Generator, h: int, w: int, cfg: DistillConfig) -> tuple[int, int, int, int, bool]:
    """(y0, x0, crop height, crop width, flip) of one random resized crop + flip."""
    area = rng.uniform(*cfg.crop_scale) * h * w
    aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
    ch = int(min(h, max(8, round(math.sqrt(area / aspect)))))
    cw = int(min(w, max(8, round(math.sqrt(area * aspect)))))
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    return y0, x0, ch, cw, bool(cfg.flip and rng.random() < 0.5)


def _view(torch, img, params, size_hw):
    """One view of ``img`` [C, H, W] (``_view_params``), resized to ``size_hw``: [1, C, h, w]."""
    import torch.nn.functional as F
    y0, x0, ch, cw, flip = params
    v = img[None, :, y0:y0 + ch, x0:x0 + cw]
    if flip:
        v = torch.flip(v, dims=[3])
    if (ch, cw) != tuple(size_hw):
        v = F.interpolate(v, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
    return v


def _views(torch, x, rng: np.random.Generator, cfg: DistillConfig, size_hw):
    """A random resized crop + flip of each image, resized to ``size_hw`` (one view per image)."""
    h, w = x.shape[2], x.shape[3]
    return torch.cat([_view(torch, img, _view_params(rng, h, w, cfg), size_hw) for img in x]
                     ).contiguous(memory_format=torch.channels_last)


def mix(torch, x, rng: np.random.Generator, alpha: float):
    """``x`` [N, ...] blended with a permutation of itself, weights drawn from Beta(alpha, alpha) per image
    (mixup's inputs; the teacher labels the blend itself, so no label mixing is needed)."""
    if len(x) < 2:
        return x
    lam = torch.from_numpy(rng.beta(alpha, alpha, len(x)).astype(np.float32)).view(-1, *([1] * (x.dim() - 1)))
    other = x[torch.from_numpy(rng.permutation(len(x)))]
    return (lam * x + (1.0 - lam) * other).contiguous(memory_format=torch.channels_last)


def fixed_views(n_images: int, h: int, w: int, cfg: DistillConfig, rng: np.random.Generator) -> list[list[tuple]]:
    """``cfg.views`` view parameters per image, drawn once: the whole image, its mirror (with
    ``flip``), then random resized crops + flips."""
    out = []
    for _ in range(n_images):
        vs = [(0, 0, h, w, False)] + ([(0, 0, h, w, True)] if cfg.flip else [])
        while len(vs) < cfg.views:
            vs.append(_view_params(rng, h, w, cfg))
        out.append(vs[:cfg.views])
    return out


def teacher_cache(torch, teacher, names: list[str], x_all, views: list[list[tuple]], size_hw,
                  batch: int) -> dict[str, Any]:
    """The teacher's ``names`` tensors for every (image, view), computed once: {name: [images, views, ...]}.
    Training then never runs the teacher."""
    n, k = len(views), len(views[0])
    flat = [(i, j) for i in range(n) for j in range(k)]
    parts: dict[str, list] = {t: [] for t in names}
    with torch.no_grad():
        for s in range(0, len(flat), batch):
            xb = torch.cat([_view(torch, x_all[i], views[i][j], size_hw) for i, j in flat[s:s + batch]])
            _, env = teacher.features(xb.contiguous(memory_format=torch.channels_last), names)
            for t in names:
                parts[t].append(env[t].detach().clone())
    return {t: torch.cat(v).reshape(n, k, *v[0].shape[1:]) for t, v in parts.items()}


def _logit_inputs(model: onnx.ModelProto) -> dict[str, str]:
    """Graph output name -> tensor to match it on (the input of a final Softmax, else itself)."""
    prod = {o: n for n in model.graph.node for o in n.output}
    out = {}
    for o in model.graph.output:
        n = prod.get(o.name)
        out[o.name] = n.input[0] if n is not None and n.op_type == "Softmax" else o.name
    return out


def _feature_pairs(teacher: onnx.ModelProto, student: onnx.ModelProto, kept: dict[str, np.ndarray]) -> list[str]:
    t_out = {n.output[0] for n in teacher.graph.node if n.op_type == "Add"}
    return sorted(t_out & {n.output[0] for n in student.graph.node if n.op_type == "Add"})


def _cpu() -> float:
    """Process CPU seconds (user + system): the figure that means something on a shared machine."""
    return time.process_time()


def _logit_loss(F, logits: dict[str, str], s_logits: dict[str, str], t_env, s_env, tau: float):
    """KL(teacher || student) at temperature ``tau`` for [N, K] logits, relative squared error otherwise."""
    loss = 0.0
    for out_name, t_name in logits.items():
        t, s = t_env[t_name], s_env[s_logits[out_name]]
        if t.dim() == 2 and t.shape[1] > 1:
            loss = loss + F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), reduction="batchmean",
                                   log_target=True) * tau * tau
        else:
            loss = loss + ((s - t) ** 2).mean() / (t.pow(2).mean() + 1e-8)
    return loss


def schedule_fraction(step: int, total: int, elapsed: float, budget: float | None,
                      settle: int = SCHEDULE_SETTLE_STEPS) -> tuple[float, bool]:
    """(where a cosine schedule of ``total`` steps stands, whether the clock decided it).

    ``step / total`` while the pace measured over the steps so far (after ``settle`` of them) fits
    ``budget`` seconds, so a seed gives the same run however busy the machine is; once the pace says
    the run will not fit, the elapsed share of the budget when that is further on (the run still ends
    at a low rate); 1.0, i.e. stop, once the budget is spent."""
    by_step = step / total
    if budget is None:
        return by_step, False
    if budget <= 0 or elapsed >= budget:
        return 1.0, True
    if step >= settle and elapsed / budget > by_step:     # the pace so far overruns the budget
        return elapsed / budget, True
    return by_step, False


def set_cosine_lr(opt, lr: float, frac: float) -> None:
    """Each parameter group's rate: ``lr`` x its ``scale``, on a cosine from 1 at ``frac`` 0 to 0 at 1."""
    for grp in opt.param_groups:
        grp["lr"] = grp["scale"] * lr * 0.5 * (1.0 + math.cos(math.pi * frac))


def train_step(opt, loss, losses: list, bar) -> None:
    """One optimizer step on ``loss``; its value appended to ``losses``, the bar advanced."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(float(loss.detach()))
    bar.update()


def distill(original: onnx.ModelProto, pruned: onnx.ModelProto, kept: dict[str, np.ndarray], samples: np.ndarray,
            config: DistillConfig | None = None, progress_bar: bool = True) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Train ``pruned`` to match ``original`` on ``samples``; returns (cleaned trained model, report dict)."""
    cfg = (config or DistillConfig()).validate()
    from ..torch_graph import TorchGraph, torch
    import torch.nn.functional as F

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    teacher_onnx, student_onnx = clean_model(original), clean_model(pruned)
    teacher, student = TorchGraph(teacher_onnx), TorchGraph(student_onnx)
    teacher.eval().requires_grad_(False)
    teacher = teacher.to(memory_format=torch.channels_last)
    student = student.to(memory_format=torch.channels_last)
    x_all = torch.from_numpy(np.ascontiguousarray(samples, dtype=np.float32))
    size = cfg.train_size or int(x_all.shape[2])
    size_hw = (size, round(size * x_all.shape[3] / x_all.shape[2]))
    size_note = None
    try:
        with torch.no_grad():
            student(_views(torch, x_all[:1], np.random.default_rng(0), cfg, size_hw))
            teacher(_views(torch, x_all[:1], np.random.default_rng(0), cfg, size_hw))
    except (RuntimeError, EdgeInferError):
        size_hw = tuple(int(s) for s in x_all.shape[2:])   # the graph depends on its input size
        size_note = f"trained at the model's own size {size_hw[0]}x{size_hw[1]} (the graph needs it)"
    s_full = fixed_hw(student_onnx)
    ratio = s_full[0] / int(x_all.shape[2]) if s_full and s_full != tuple(x_all.shape[2:]) else 1.0
    s_hw = (max(1, round(size_hw[0] * ratio)), max(1, round(size_hw[1] * ratio)))

    def student_view(x):
        """The student's input: the teacher's view, resized when pruning lowered the input size."""
        return x if ratio == 1.0 else F.interpolate(x, size=s_hw if x.shape[2:] == size_hw else s_full,
                                                    mode="bilinear", align_corners=False, antialias=True
                                                    ).contiguous(memory_format=torch.channels_last)
    if ratio != 1.0:
        size_note = (f"the student sees each view at {s_hw[0]}x{s_hw[1]}, the teacher at {size_hw[0]}x{size_hw[1]} "
                     "(pruning lowered the input size)")
    logits = _logit_inputs(teacher_onnx)
    s_logits = _logit_inputs(student_onnx)
    feats = _feature_pairs(teacher_onnx, student_onnx, kept) if cfg.feature_weight > 0 and ratio == 1.0 else []
    t_names = sorted(set(logits.values()) | set(feats))
    s_names = sorted(set(s_logits.values()) | set(feats))
    kept_t = {f: torch.from_numpy(np.asarray(kept[f])) for f in feats if f in kept}

    n_hold = int(round(cfg.holdout * len(x_all))) if len(x_all) >= 20 else 0
    perm = rng.permutation(len(x_all))
    x_hold = x_all[torch.from_numpy(np.sort(perm[:n_hold]))] if n_hold else None
    x_all = x_all[torch.from_numpy(np.sort(perm[n_hold:]))] if n_hold else x_all

    def held_out() -> float | None:
        """KL(teacher || student) on the held-out images, un-augmented, at the model's own size."""
        if x_hold is None:
            return None
        total_kl = 0.0
        with torch.no_grad():
            for i in range(0, len(x_hold), cfg.batch):
                xb = x_hold[i:i + cfg.batch].contiguous(memory_format=torch.channels_last)
                _, t_env = teacher.features(xb, t_names)
                _, s_env = student.features(student_view(xb), s_names)
                total_kl += float(_logit_loss(F, logits, s_logits, t_env, s_env, 1.0)) * len(xb)
        return total_kl / len(x_hold)

    if cfg.train == "affine":
        trainable = student.train_affine_only()
        notes_train = [f"trained per-channel weight scales and biases only ({trainable:,} numbers)"]
    else:
        notes_train = []
    before = {n: p.detach().clone() for n, p in zip(student.param_names, student.params)}
    kl_before = held_out()
    steps_per_epoch = max(1, math.ceil(len(x_all) / cfg.batch))
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    scales = [max(float(p.detach().pow(2).mean().sqrt()), 1e-3) if cfg.relative_lr else 1.0 for p in student.params]
    opt = torch.optim.AdamW([{"params": [p], "lr": cfg.lr * k, "scale": k} for p, k in zip(student.params, scales)],
                            lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0, cpu0 = time.perf_counter(), _cpu()
    losses, step, stopped = [], 0, False
    history: list[tuple[int, float]] = []
    best: tuple[float, int, dict | None] = (math.inf, 0, None)
    order = rng.permutation(len(x_all))
    cache = None
    if cfg.views:
        t_cache = time.perf_counter()
        views = fixed_views(len(x_all), int(x_all.shape[2]), int(x_all.shape[3]), cfg, rng)
        cache = teacher_cache(torch, teacher, t_names, x_all, views, size_hw, cfg.batch)
        progress(f"distillation: teacher logits cached for {len(x_all)} images x {cfg.views} views "
                 f"in {time.perf_counter() - t_cache:.0f} s")
    progress(f"distillation: {len(x_all)} images, {total} steps of {cfg.batch} at {size_hw[0]} px"
             + (f", time budget {cfg.time_budget:.0f} s" if cfg.time_budget else ""))
    deadline = t0 + cfg.time_budget if cfg.time_budget else None
    last_note = t_train = time.perf_counter()
    followed_clock = False
    with Progress("distilling", total, progress_bar, deadline=deadline) as bar:
        while step < total:
            frac, by_clock = schedule_fraction(step, total, time.perf_counter() - t_train,
                                               deadline - t_train if deadline else None)
            followed_clock |= by_clock
            if frac >= 1.0:
                stopped = True
                break
            set_cosine_lr(opt, cfg.lr, frac)
            pos = (step * cfg.batch) % len(x_all)
            if pos + cfg.batch > len(x_all) and step:
                order = rng.permutation(len(x_all))
            idx = order[pos:pos + cfg.batch] if pos + cfg.batch <= len(x_all) else order[:cfg.batch]
            idx = np.sort(idx)
            if cache is not None:
                pick = rng.integers(0, cfg.views, len(idx))
                x = torch.cat([_view(torch, x_all[i], views[i][j], size_hw) for i, j in zip(idx, pick)]
                              ).contiguous(memory_format=torch.channels_last)
                t_env = {t: v[torch.from_numpy(idx), torch.from_numpy(pick)] for t, v in cache.items()}
            else:
                x = _views(torch, x_all[torch.from_numpy(idx)], rng, cfg, size_hw)
                if cfg.mixup:
                    x = mix(torch, x, rng, cfg.mixup)
                with torch.no_grad():
                    _, t_env = teacher.features(x, t_names)
            _, s_env = student.features(student_view(x), s_names)
            loss = _logit_loss(F, logits, s_logits, t_env, s_env, cfg.temperature)
            for f in feats:
                t = t_env[f].index_select(1, kept_t[f]) if f in kept_t else t_env[f]
                loss = loss + cfg.feature_weight * ((s_env[f] - t) ** 2).mean() / (t.pow(2).mean() + 1e-8) / len(feats)
            train_step(opt, loss, losses, bar)
            step += 1
            if x_hold is not None and step % steps_per_epoch == 0:   # keep the epoch the held-out images liked best
                kl = held_out()
                history.append((step, kl))
                if kl < best[0]:
                    best = (kl, step, {n: p.detach().clone() for n, p in zip(student.param_names, student.params)})
            now = time.perf_counter()
            if not bar.live and now - last_note > 60:      # logs get a line a minute (the bar needs a terminal)
                last_note = now
                left = (now - t0) / step * (total - step)
                left = min(left, deadline - now) if deadline else left
                progress(f"distillation: step {step}/{total}, loss {np.mean(losses[-10:]):.4f}, eta {left:.0f} s")
    seconds, cpu = time.perf_counter() - t0, _cpu() - cpu0
    if not losses:
        raise EdgeInferError("distillation made no step within its time budget; raise the budget or use --recover lsq")
    kl_after = history[-1][1] if history and history[-1][0] == step else held_out()
    notes = ([size_note] if size_note else []) + notes_train
    if best[2] is not None and kl_after is not None and best[0] < BEST_EPOCH_MARGIN * kl_after:
        with torch.no_grad():
            for n, p in zip(student.param_names, student.params):
                p.copy_(best[2][n])
        notes.append(f"held-out KL was lowest after step {best[1]} ({best[0]:.4f}; {kl_after:.4f} at the end): "
                     "those weights are kept")
        kl_after = best[0]
    reverted = kl_before is not None and kl_after > kl_before
    if reverted:     # training overfit or diverged: keep the least-squares weights
        with torch.no_grad():
            for n, p in zip(student.param_names, student.params):
                p.copy_(before[n])
        notes.append(f"held-out KL rose {kl_before:.4f} -> {kl_after:.4f}: distillation undone, least-squares weights kept")
    trained = student.write_back(student_onnx)
    head = max(1, min(10, len(losses) // 4))
    report = {"steps": step, "epochs": round(step / steps_per_epoch, 3), "images": int(len(x_all)),
              "batch": cfg.batch, "train_size": int(size_hw[0]), "lr": cfg.lr, "relative_lr": cfg.relative_lr,
              "train": cfg.train, "seconds": round(seconds, 1),
              "steps_per_second": round(step / max(seconds, 1e-9), 4), "cpu_seconds": round(cpu, 1), "threads": int(torch.get_num_threads()),
              "time_budget": cfg.time_budget, "stopped_by_budget": stopped, "followed_clock": followed_clock,
              "seed": cfg.seed, "augment": {"crop_scale": list(cfg.crop_scale), "flip": cfg.flip, "mixup": cfg.mixup,
                          "fixed_views": cfg.views, "teacher_cached": bool(cfg.views)},
              "feature_loss": {"weight": cfg.feature_weight, "tensors": len(feats)},
              "loss_first": float(np.mean(losses[:head])), "loss_last": float(np.mean(losses[-head:])),
              "held_out": {"images": n_hold, "kl_before": kl_before, "kl_after": kl_after, "reverted": reverted,
                           "per_epoch": [[k, round(v, 5)] for k, v in history],
                           "kept_step": best[1] if best[2] is not None and best[0] == kl_after else step},
              "notes": notes}
    progress(f"distillation: {step} steps in {seconds:.0f} s ({step / max(seconds, 1e-9):.3f} steps/s; CPU {cpu:.0f} s), loss {report['loss_first']:.4f} -> {report['loss_last']:.4f}"
             + (f", held-out KL {kl_before:.4f} -> {kl_after:.4f} on {n_hold} images" if n_hold else ""))
    return trained, report
