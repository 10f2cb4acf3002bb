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
  and student see the same view;
- AdamW at ``lr`` with a cosine decay over ``epochs``, cut short by ``time_budget`` seconds (the
  schedule then follows elapsed time, so the run still ends at a low learning rate);
- deterministic for a ``seed`` on a given machine and thread count.

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
from .runner import progress


@dataclass
class DistillConfig:
    """Knobs of the distillation run (defaults: ~15 min for MobileNetV2 on a 2-core laptop)."""

    epochs: float = 4.0
    time_budget: float | None = 900.0     # seconds; None = no limit
    batch: int = 16
    lr: float = 1e-4
    weight_decay: float = 0.0
    train_size: int | None = 160          # training resolution (None = the model's own)
    crop_scale: tuple[float, float] = (0.5, 1.0)
    flip: bool = True
    temperature: float = 1.0
    feature_weight: float = 0.0
    seed: int = 0
    threads: int | None = None            # torch intra-op threads (None = torch's default)

    def validate(self) -> "DistillConfig":
        if not (isinstance(self.epochs, (int, float)) and self.epochs > 0):
            raise EdgeInferError(f"distill epochs must be > 0, got {self.epochs!r}")
        if self.time_budget is not None and not (isinstance(self.time_budget, (int, float)) and self.time_budget > 0):
            raise EdgeInferError(f"distill time budget must be > 0 seconds, got {self.time_budget!r}")
        if isinstance(self.batch, bool) or not isinstance(self.batch, int) or self.batch < 1:
            raise EdgeInferError(f"distill batch must be an integer >= 1, got {self.batch!r}")
        if self.train_size is not None and (not isinstance(self.train_size, int) or self.train_size < 8):
            raise EdgeInferError(f"distill train_size must be an integer >= 8 pixels, got {self.train_size!r}")
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise EdgeInferError(f"distill crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale!r}")
        return self


def _views(torch, x, rng: np.random.Generator, cfg: DistillConfig, size_hw):
    """A random resized crop + flip of each image, resized to ``size_hw`` (one view per image)."""
    import torch.nn.functional as F
    h, w = x.shape[2], x.shape[3]
    out = []
    for img in x:
        area = rng.uniform(*cfg.crop_scale) * h * w
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        ch = int(min(h, max(8, round(math.sqrt(area / aspect)))))
        cw = int(min(w, max(8, round(math.sqrt(area * aspect)))))
        y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
        v = img[None, :, y0:y0 + ch, x0:x0 + cw]
        if cfg.flip and rng.random() < 0.5:
            v = torch.flip(v, dims=[3])
        if (ch, cw) != tuple(size_hw):
            v = F.interpolate(v, size=size_hw, mode="bilinear", align_corners=False, antialias=True)
        out.append(v)
    return torch.cat(out).contiguous(memory_format=torch.channels_last)


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
    logits = _logit_inputs(teacher_onnx)
    s_logits = _logit_inputs(student_onnx)
    feats = _feature_pairs(teacher_onnx, student_onnx, kept) if cfg.feature_weight > 0 else []
    t_names = sorted(set(logits.values()) | set(feats))
    s_names = sorted(set(s_logits.values()) | set(feats))
    kept_t = {f: torch.from_numpy(np.asarray(kept[f])) for f in feats if f in kept}

    steps_per_epoch = max(1, math.ceil(len(x_all) / cfg.batch))
    total = max(1, int(round(cfg.epochs * steps_per_epoch)))
    opt = torch.optim.AdamW(student.params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    t0 = time.perf_counter()
    losses, step, stopped = [], 0, False
    order = rng.permutation(len(x_all))
    progress(f"distillation: {len(x_all)} images, {total} steps of {cfg.batch} at {size_hw[0]} px"
             + (f", time budget {cfg.time_budget:.0f} s" if cfg.time_budget else ""))
    deadline = t0 + cfg.time_budget if cfg.time_budget else None
    last_note = t0
    with Progress("distilling", total, progress_bar, deadline=deadline) as bar:
        while step < total:
            frac = step / total
            if cfg.time_budget:
                frac = max(frac, (time.perf_counter() - t0) / cfg.time_budget)
            if frac >= 1.0:
                stopped = True
                break
            for grp in opt.param_groups:
                grp["lr"] = cfg.lr * 0.5 * (1.0 + math.cos(math.pi * frac))
            pos = (step * cfg.batch) % len(x_all)
            if pos + cfg.batch > len(x_all) and step:
                order = rng.permutation(len(x_all))
            idx = order[pos:pos + cfg.batch] if pos + cfg.batch <= len(x_all) else order[:cfg.batch]
            x = _views(torch, x_all[torch.from_numpy(np.sort(idx))], rng, cfg, size_hw)
            with torch.no_grad():
                _, t_env = teacher.features(x, t_names)
            _, s_env = student.features(x, s_names)
            loss = 0.0
            for out_name, t_name in logits.items():
                t, s = t_env[t_name], s_env[s_logits[out_name]]
                if t.dim() == 2 and t.shape[1] > 1:
                    tau = cfg.temperature
                    loss = loss + F.kl_div(F.log_softmax(s / tau, 1), F.log_softmax(t / tau, 1), reduction="batchmean",
                                           log_target=True) * tau * tau
                else:
                    loss = loss + ((s - t) ** 2).mean() / (t.pow(2).mean() + 1e-8)
            for f in feats:
                t = t_env[f].index_select(1, kept_t[f]) if f in kept_t else t_env[f]
                loss = loss + cfg.feature_weight * ((s_env[f] - t) ** 2).mean() / (t.pow(2).mean() + 1e-8) / len(feats)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            step += 1
            bar.update()
            now = time.perf_counter()
            if not bar.live and now - last_note > 60:      # logs get a line a minute (the bar needs a terminal)
                last_note = now
                left = (now - t0) / step * (total - step)
                left = min(left, deadline - now) if deadline else left
                progress(f"distillation: step {step}/{total}, loss {np.mean(losses[-10:]):.4f}, eta {left:.0f} s")
    seconds = time.perf_counter() - t0
    if not losses:
        raise EdgeInferError("distillation made no step within its time budget; raise the budget or use --recover lsq")
    trained = student.write_back(student_onnx)
    head = max(1, min(10, len(losses) // 4))
    report = {"steps": step, "epochs": round(step / steps_per_epoch, 3), "images": int(len(x_all)),
              "batch": cfg.batch, "train_size": int(size_hw[0]), "lr": cfg.lr, "seconds": round(seconds, 1),
              "time_budget": cfg.time_budget, "stopped_by_budget": stopped, "seed": cfg.seed,
              "augment": {"crop_scale": list(cfg.crop_scale), "flip": cfg.flip},
              "feature_loss": {"weight": cfg.feature_weight, "tensors": len(feats)},
              "loss_first": float(np.mean(losses[:head])), "loss_last": float(np.mean(losses[-head:])),
              "notes": [size_note] if size_note else []}
    progress(f"distillation: {step} steps in {seconds:.0f} s, loss {report['loss_first']:.4f} -> {report['loss_last']:.4f}")
    return trained, report
