"""Train AudioCNN on ESC-50. Fold 5 is the test fold and is never read here.

Folds 1–4 train; ``val_fold`` (1–4) may be held out to check the recipe and fit the
calibration, otherwise the schedule is fixed and the last epoch is the model.

Recipe for recordings that are not ESC-50: per-window level reference (in the model),
clips filled by repetition as served, with probability ``crop_p`` a random 0.5–2.5 s
crop repeated to fill the window (what a short excerpt looks like), a random circular
time shift, with probability ``band_p`` the clip as heard through an 8 or 16 kHz
sample rate (cached variants, the decoder's own resampler), SpecAugment, two clips
mixed as sound (``mix="sound"``; ``"db"`` is MixUp of the dB inputs with
Beta(0.2, 0.2)), label smoothing 0.1, dropout 0.5, AdamW with OneCycleLR. bf16
autocast on CPUs that support it and fp16 autocast on CUDA.

Distillation (``teachers``): each batch's targets become ``distill`` × the teachers'
averaged probabilities on the same augmented view plus (1 − ``distill``) × the labels.
With ``teacher_views`` the teachers run once, on that many fixed views per clip, and each
step draws one of them (``training.teacher_targets``): an epoch then costs what one
without teachers does.

Every epoch writes ``last.pt`` (model, optimizer, scheduler, epoch, RNG) so
``--resume`` continues a killed run exactly, and ``last.safetensors``.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from tagger.checkpoint import save_checkpoint
from tagger.device import autocast_dtype, resolve_device
from tagger.engine import forward
from tagger.network import AudioCNN, reference_to_peak
from training.data import BAND_LIMITS, TEST_FOLD, load_spectrograms, read_esc50


@dataclass
class TrainConfig:
    data_dir: str | None = None
    out_dir: str = "runs/esc50"
    epochs: int = 150
    batch_size: int = 32
    max_lr: float = 2e-3
    weight_decay: float = 0.01
    mixup_alpha: float = 0.2
    mix: str = "sound"  # two clips mixed as sound (between-class learning); "db": MixUp of the dB inputs
    label_smoothing: float = 0.1
    freq_mask: int = 12
    time_mask: int = 60
    time_roll: bool = True  # random circular shift along time, per clip
    crop_p: float = 0.3  # a random 0.5–2.5 s crop repeated to fill the window
    band_p: float = 0.3  # the clip through an 8 or 16 kHz sample rate
    val_fold: int | None = None  # 1–4 to hold one out; None trains on all of folds 1–4
    seed: int = 1234
    device: str = "auto"
    limit: int | None = None  # use only this many training clips (smoke tests)
    num_threads: int | None = None
    resume: bool = False
    teachers: tuple[str, ...] = ()  # checkpoints whose averaged probabilities are the soft targets
    exclude_classes: tuple[str, ...] = ()  # classes left out altogether (a network that never heard them)
    distill: float = 0.9  # the teachers' share of each target, when there are teachers
    teacher_views: int = 0  # >0: the teachers run once on this many fixed views per clip (teacher_targets)


def mix_as_sound(x: torch.Tensor, y: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Between-class mixing (Tokozume et al.'s BC learning) on dB spectrograms: two clips
    added as sound with a ratio r ~ U(0, 1) corrected for their levels, so the quieter one
    is still heard as r says; the label is r : 1 - r. Uncorrelated sounds add in power."""
    b = x.shape[0]
    mix = torch.randperm(b, generator=gen)
    r = torch.rand(b, generator=gen).clamp(1e-3, 1 - 1e-3)
    g1, g2 = x.amax(dim=(1, 2, 3)), x[mix].amax(dim=(1, 2, 3))  # levels in dB
    p = 1 / (1 + 10 ** ((g1 - g2) / 20) * (1 - r) / r)  # waveform weight of the first clip
    w1, w2 = (p**2)[:, None, None, None], ((1 - p) ** 2)[:, None, None, None]
    peak = torch.maximum(x, x[mix])  # factor the larger term out: no overflow in 10^(dB/10)
    power = w1 * 10 ** ((x - peak) / 10) + w2 * 10 ** ((x[mix] - peak) / 10)
    mixed = peak + 10 * torch.log10(power.clamp_min(1e-10))
    return mixed, r[:, None] * y + (1 - r[:, None]) * y[mix]


def spec_augment(x: torch.Tensor, freq_mask: int, time_mask: int, gen: torch.Generator) -> torch.Tensor:
    """One frequency and one time mask per clip, filled with the clip's mean."""
    b, _, n_mels, frames = x.shape
    fill = x.mean(dim=(1, 2, 3), keepdim=True)
    f_w = torch.randint(0, freq_mask + 1, (b,), generator=gen)
    f_0 = (torch.rand(b, generator=gen) * (n_mels - f_w)).long()
    t_w = torch.randint(0, time_mask + 1, (b,), generator=gen)
    t_0 = (torch.rand(b, generator=gen) * (frames - t_w)).long()
    mel_idx = torch.arange(n_mels).view(1, -1)
    t_idx = torch.arange(frames).view(1, -1)
    f_mask = (mel_idx >= f_0[:, None]) & (mel_idx < (f_0 + f_w)[:, None])
    t_mask = (t_idx >= t_0[:, None]) & (t_idx < (t_0 + t_w)[:, None])
    mask = f_mask[:, None, :, None] | t_mask[:, None, None, :]
    return torch.where(mask.to(x.device), fill, x)


def time_roll(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Shift each clip circularly along time by a random number of frames."""
    b, _, _, frames = x.shape
    shift = torch.randint(0, frames, (b,), generator=gen)
    idx = (torch.arange(frames)[None, :] + shift[:, None]) % frames
    return torch.gather(x, 3, idx[:, None, None, :].expand_as(x))


CROP_FRAMES = (43, 215)  # 0.5–2.5 s at hop 512


def crop_and_repeat(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """With probability p per clip: a random short crop repeated to fill the window,
    as the tagger fills a short excerpt."""
    b, _, _, frames = x.shape
    out = x.clone()
    chosen = torch.nonzero(torch.rand(b, generator=gen) < p).flatten()
    for i in chosen.tolist():
        length = int(torch.randint(CROP_FRAMES[0], CROP_FRAMES[1] + 1, (1,), generator=gen))
        start = int(torch.randint(0, frames - length + 1, (1,), generator=gen))
        crop = x[i, :, :, start : start + length]
        out[i] = crop.repeat(1, 1, -(-frames // length))[:, :, :frames]
    return out


# What runs saved before a setting existed used, so that they resume as they began.
_LEGACY_CONFIG: dict = {"mix": "db", "teachers": (), "distill": 0.9, "exclude_classes": (), "teacher_views": 0}


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(dim=-1).mean()


def predict_probs(model: AudioCNN, specs, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """Class probabilities of cached spectrograms through the serving forward pass."""
    model.eval()
    out = []
    for i in range(0, len(specs), batch_size):
        x = torch.from_numpy(np.asarray(specs[i : i + batch_size], dtype=np.float32))
        out.append(torch.softmax(forward(model, x, device).float(), dim=-1).cpu().numpy())
    return np.concatenate(out)


def train(cfg: TrainConfig) -> dict:
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    device = resolve_device(cfg.device)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.val_fold == TEST_FOLD:
        raise SystemExit(f"fold {TEST_FOLD} is the test fold: it is never used while training")
    data = read_esc50(cfg.data_dir)
    variants = [load_spectrograms(data, variant=v) for v in BAND_LIMITS]  # full, 16k, 8k
    class_names, number = kept_classes(data.class_names, cfg.exclude_classes)
    kept = number[data.targets] >= 0
    train_idx = np.flatnonzero((data.folds != TEST_FOLD) & (data.folds != (cfg.val_fold or 0)) & kept)
    val_idx = np.flatnonzero((data.folds == cfg.val_fold) & kept) if cfg.val_fold else np.zeros(0, dtype=int)
    if cfg.limit:
        train_idx = train_idx[: cfg.limit]
        val_idx = val_idx[: max(cfg.limit // 4, 8)]
    # Training set in memory (float16 halves it); the spectrogram caches are mmapped.
    x_train = torch.from_numpy(np.stack([np.asarray(v[train_idx]) for v in variants]))  # (3, N, 1, M, T)
    y_train = torch.from_numpy(number[data.targets[train_idx]])
    x_val = np.asarray(variants[0][val_idx])
    y_val = number[data.targets[val_idx]]
    n_classes = len(class_names)

    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    model = AudioCNN(num_classes=n_classes)
    with torch.no_grad():  # input statistics after the model's own level reference
        referenced = reference_to_peak(x_train[0].float())
        model.input_mean.fill_(float(referenced.mean()))
        model.input_std.fill_(float(referenced.std()))
        del referenced
    model = model.to(device).to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.max_lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=cfg.max_lr, epochs=cfg.epochs, steps_per_epoch=steps_per_epoch
    )
    state: dict[str, Any] = {"epoch": 0, "history": []}

    last = out / "last.pt"
    if last.is_file() and not cfg.resume:
        raise SystemExit(f"{out} already holds a run: pass --resume to continue it, or choose another --out-dir")
    if cfg.resume and not last.is_file():
        print(f"--resume: no run in {out} yet, starting a new one")
    if last.is_file():
        ckpt = torch.load(last, map_location="cpu", weights_only=True)
        saved_cfg = json.loads(ckpt["config"])
        for key in ("epochs", "batch_size", "max_lr", "seed", "val_fold", "limit", "time_roll", "crop_p", "band_p",
                    "mix", "teachers", "distill", "exclude_classes", "teacher_views"):
            saved = saved_cfg.get(key, _LEGACY_CONFIG.get(key))
            if key in ("teachers", "exclude_classes") and saved is not None:
                saved = tuple(saved)
            if saved != getattr(cfg, key):
                raise SystemExit(f"--resume: {key}={getattr(cfg, key)} differs from the run in {out} ({saved})")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["torch_rng"])
        gen.set_state(ckpt["gen_rng"])
        state = json.loads(ckpt["state"])
        print(f"resumed {out} at epoch {state['epoch']}")

    writer = _summary_writer(out)
    dtype = autocast_dtype(device)
    teachers = _load_teachers(cfg.teachers, class_names, device)
    views = view_probs = None
    if teachers and cfg.teacher_views:
        from training.teacher_targets import fixed_views, teacher_targets

        views = fixed_views(x_train, cfg.teacher_views, cfg.band_p, cfg.crop_p, cfg.time_roll, cfg.seed)
        view_probs = teacher_targets(views, cfg.teachers, teachers, dtype, device, out / "teacher_targets.pt")
        teachers = []  # their work is done
    beta = torch.distributions.Beta(cfg.mixup_alpha, cfg.mixup_alpha)
    epochs_bar = tqdm(range(state["epoch"], cfg.epochs), desc="epochs", unit="epoch", initial=state["epoch"],
                      total=cfg.epochs)
    for epoch in epochs_bar:
        model.train()
        t0 = time.perf_counter()
        perm = torch.randperm(len(train_idx), generator=gen)
        losses = []
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}", unit="step", leave=False)
        for step in bar:
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            y = F.one_hot(y_train[idx], n_classes).float()
            y = y * (1 - cfg.label_smoothing) + cfg.label_smoothing / n_classes
            if views is not None and view_probs is not None:
                view = torch.randint(0, len(views), (len(idx),), generator=gen)
                x = views[view, idx].float()
                y = (1 - cfg.distill) * y + cfg.distill * view_probs[view, idx]
            else:
                band = torch.where(torch.rand(len(idx), generator=gen) < cfg.band_p,
                                   torch.randint(1, len(variants), (len(idx),), generator=gen), 0)
                x = crop_and_repeat(x_train[band, idx].float(), cfg.crop_p, gen)
                if cfg.time_roll:
                    x = time_roll(x, gen)
            x = spec_augment(x, cfg.freq_mask, cfg.time_mask, gen)
            if cfg.mix == "sound":
                x, y = mix_as_sound(x, y, gen)
            else:
                lam = float(beta.sample())
                mix = torch.randperm(len(idx), generator=gen)
                x = lam * x + (1 - lam) * x[mix]
                y = lam * y + (1 - lam) * y[mix]
            x = x.to(device).contiguous(memory_format=torch.channels_last)
            if teachers:
                y = (1 - cfg.distill) * y.to(device) + cfg.distill * _teachers_probs(teachers, x, dtype)
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                logits = model(x)
            loss = soft_cross_entropy(logits, y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{loss.item():.3f}")
        train_s = time.perf_counter() - t0
        record = {"epoch": epoch + 1, "loss": float(np.mean(losses)), "lr": scheduler.get_last_lr()[0],
                  "epoch_seconds": train_s}
        if len(val_idx):
            probs = predict_probs(model, x_val, device)
            record["val_top1"] = float((probs.argmax(1) == y_val).mean())
            record["val_top3"] = float((np.argsort(-probs, 1)[:, :3] == y_val[:, None]).any(1).mean())
        state["history"].append(record)
        state["epoch"] = epoch + 1
        if writer:
            for key, value in record.items():
                if key != "epoch":
                    writer.add_scalar(key, value, epoch + 1)
            writer.flush()
        # The schedule is fixed: the last epoch is the model (nothing is picked on a fold).
        save_checkpoint(out / "last.safetensors", model, class_names,
                        {"trained_on_folds": sorted(set(data.folds[train_idx].tolist())), "epoch": epoch + 1,
                         **({"val_fold": cfg.val_fold, "val_top1": record["val_top1"],
                             "val_top3": record["val_top3"]} if len(val_idx) else {})},
                        half=False)
        _save_last(last, model, optimizer, scheduler, gen, state, cfg)
        epochs_bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{record.get('val_top1', float('nan')):.3f}")
        tqdm.write(json.dumps(record))
    if writer:
        writer.close()
    (out / "history.json").write_text(json.dumps(state, indent=1))
    return state


def kept_classes(class_names: list[str], excluded: tuple[str, ...]) -> tuple[list[str], np.ndarray]:
    """The classes trained on, and each ESC-50 target's number among them (-1: left out)."""
    unknown = sorted(set(excluded) - set(class_names))
    if unknown:
        raise SystemExit(f"--exclude-classes: no class {', '.join(unknown)} in the data")
    kept = [c for c in class_names if c not in excluded]
    return kept, np.array([kept.index(c) if c in kept else -1 for c in class_names])


def _load_teachers(paths: tuple[str, ...], class_names: list[str], device: torch.device) -> list[AudioCNN]:
    from tagger.checkpoint import load_checkpoint

    teachers = []
    for path in paths:
        ckpt = load_checkpoint(path, device)
        if ckpt.class_names != class_names:
            raise SystemExit(f"teacher {path} has other classes than the data")
        teachers.append(ckpt.model.float().to(memory_format=torch.channels_last).eval())
    return teachers


@torch.inference_mode()
def _teachers_probs(teachers: list[AudioCNN], x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """The teachers' averaged probabilities on a batch, as the student sees it."""
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        probs = [torch.softmax(teacher(x).float(), dim=-1) for teacher in teachers]
    return torch.stack(probs).mean(0).clone()


def _save_last(path: Path, model, optimizer, scheduler, gen, state, cfg) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(
        {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "gen_rng": gen.get_state(),
            "state": json.dumps(state),
            "config": json.dumps(asdict(cfg)),
        },
        tmp,
    )
    tmp.replace(path)  # atomic: a kill mid-save keeps the previous epoch's state


def _summary_writer(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        print("tensorboard not installed (pip install 'soundtag[train]'): no TensorBoard logs")
        return None
    return SummaryWriter(str(out / "tensorboard"))


def export_checkpoint(run_dir: str | Path, dest: str | Path) -> str:
    """The run's last-epoch weights as the fp16 checkpoint soundtag ships."""
    from tagger.checkpoint import load_checkpoint

    best = load_checkpoint(Path(run_dir) / "last.safetensors")
    return save_checkpoint(dest, best.model, best.class_names, best.metrics, half=True)


def cross_validate(cfg: TrainConfig) -> dict:
    """4-fold cross-validation on folds 1–4 (fold 5 stays the test fold): last-epoch top-1."""
    scores = {}
    for fold in range(1, TEST_FOLD):
        fold_cfg = TrainConfig(**{**asdict(cfg), "val_fold": fold, "out_dir": f"{cfg.out_dir}/fold{fold}"})
        scores[fold] = train(fold_cfg)["history"][-1]["val_top1"]
        print(f"fold {fold}: last-epoch val top-1 {scores[fold]:.4f}")
    mean = float(np.mean(list(scores.values())))
    print(f"4-fold mean top-1 (folds 1–4): {mean:.4f}")
    (Path(cfg.out_dir) / "cv.json").write_text(json.dumps({"folds": scores, "mean_top1": mean}, indent=1))
    return {"folds": scores, "mean_top1": mean}
