"""Pictures of a clip for the review pages, rendered from the spool on demand and cached.

- `preview_gif`: the whole run as an animated GIF (at most MAX_PREVIEW_FRAMES
  frames, evenly spaced, at its own frame rate), contrast-stretched per clip.
- `sampled_frames_png`: the frames the serving model samples, preprocessed
  as the model sees them (square, resized, stretched), in one grid.
- `heat_map`: occlusion sensitivity of the serving checkpoint on this clip:
  each patch of the input (over all frames) and each sampled frame in turn
  is replaced by the mean grey, and the change in P(unsatisfactory) is the
  patch's or frame's weight. Red: what pushed the score towards
  unsatisfactory; blue: towards satisfactory. It runs the checkpoint in
  torch on the CPU, apart from the serving engine, so review never races
  the judge's engine.

Files are cached in `web.cache_dir` under the object's sha256 (and the
checkpoint's digest for heat maps), never under a UID.
"""

from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from angiogate.config import Config
from angiogate.dicom.header import read_header
from angiogate.clip.decode import decode_frames
from angiogate.clip.frames import frame_indices
from angiogate.clip.preprocess import grey_clip, to_model_input

MAX_PREVIEW_FRAMES = 90
PREVIEW_SIZE = 384
GRID = 6  # occlusion patches per side
MIN_FULL_COLOUR = 0.05  # change in P(unsatisfactory) drawn at full colour, at least
_heat_lock = threading.Lock()  # one heat map at a time: it takes the CPU the judge needs
_engines: dict[tuple[str, float], object] = {}


def _atomic_write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(path)
    return path


def _stretch(frames: np.ndarray) -> np.ndarray:
    frames = frames.astype(np.float32, copy=False)
    low, high = np.percentile(frames, [1.0, 99.0])
    if high - low <= 1e-6:
        return np.zeros(frames.shape, np.uint8)
    return (np.clip((frames - low) / (high - low), 0, 1) * 255).astype(np.uint8)


def _fit(frame: np.ndarray, size: int) -> np.ndarray:
    rows, cols = frame.shape[:2]
    scale = min(1.0, size / max(rows, cols))
    if scale >= 1.0:
        return frame
    return cv2.resize(frame, (max(1, round(cols * scale)), max(1, round(rows * scale))),
                      interpolation=cv2.INTER_AREA)


def preview_gif(spool_file: Path, cache: Path, config: Config) -> Path:
    """An animated GIF of the clip (cached)."""
    if cache.exists():
        return cache
    header = read_header(spool_file)
    n = max(1, header.frames or 1)
    step = max(1, int(np.ceil(n / MAX_PREVIEW_FRAMES)))
    indices = list(range(0, n, step))
    frames = _stretch(decode_frames(spool_file, indices))
    rate = header.frame_rate_hz or config.rules.assumed_frame_rate_hz
    images = [Image.fromarray(_fit(f, PREVIEW_SIZE)) for f in frames]
    buffer = io.BytesIO()
    duration = max(20, int(round(1000 * step / rate)))
    if len(images) == 1:
        images[0].save(buffer, format="GIF")
    else:
        images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0)
    return _atomic_write(cache, buffer.getvalue())


@dataclass(frozen=True)
class Sampling:
    indices: list[int]
    size: int
    samples: int
    source: str  # which model's input shape


def sampling(spool_file: Path, config: Config, engine) -> Sampling:
    """The frame indices and input size the serving model uses for this clip (as the judge does)."""
    header = read_header(spool_file)
    if engine is not None:
        samples, size, source = engine.info.num_frames, engine.info.crop_size, engine.version
    else:
        samples, size, source = config.frames.samples, config.frames.size, "configuration (no model)"
    rate = header.frame_rate_hz or config.rules.assumed_frame_rate_hz
    frames_cfg = config.frames
    indices = frame_indices(max(1, header.frames or 1), rate, window_start_s=frames_cfg.window_start_s,
                            sample_rate_hz=frames_cfg.sample_rate_hz, samples=samples)
    return Sampling(indices, size, samples, source)


def sampled_frames_png(spool_file: Path, cache: Path, config: Config, engine) -> Path:
    """The sampled frames, preprocessed as the model sees them, in a grid (cached)."""
    if cache.exists():
        return cache
    chosen = sampling(spool_file, config, engine)
    grey = grey_clip(decode_frames(spool_file, chosen.indices), size=chosen.size)
    tiles = [(g * 255).astype(np.uint8) for g in grey]
    tile = max(64, min(160, chosen.size))
    tiles = [cv2.resize(t, (tile, tile), interpolation=cv2.INTER_AREA) for t in tiles]
    per_row = 8
    rows = (len(tiles) + per_row - 1) // per_row
    sheet = np.full((rows * (tile + 4), per_row * (tile + 4)), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, per_row)
        sheet[r * (tile + 4):r * (tile + 4) + tile, c * (tile + 4):c * (tile + 4) + tile] = t
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    return _atomic_write(cache, buffer.getvalue())


def review_engine(checkpoint: Path):
    """The checkpoint in torch on the CPU, opened once per file version."""
    from angiogate.engines.torch_engine import TorchEngine

    key = (str(checkpoint), checkpoint.stat().st_mtime)
    if key not in _engines:
        _engines.clear()
        _engines[key] = TorchEngine(checkpoint, device="cpu")
    return _engines[key]


def _predict(engine, clips: np.ndarray, batch: int = 8) -> np.ndarray:
    out = [engine.predict(clips[k:k + batch]).unsatisfactory_probability for k in range(0, len(clips), batch)]
    return np.concatenate(out)


def occlusion(engine, model_input: np.ndarray, grid: int = GRID) -> tuple[float, np.ndarray, np.ndarray]:
    """P(unsatisfactory) of the clip, the change when each of grid x grid patches is
    greyed out over all frames, and the change when each frame is greyed out
    (positive: the region or frame raised the score)."""
    _, frames, size, _ = model_input.shape
    edges = np.linspace(0, size, grid + 1).round().astype(int)
    variants = []
    for i in range(grid):
        for j in range(grid):
            clip = model_input.copy()
            clip[:, :, edges[i]:edges[i + 1], edges[j]:edges[j + 1]] = 0.0  # 0 = the mean after normalising
            variants.append(clip)
    for t in range(frames):
        clip = model_input.copy()
        clip[:, t] = 0.0
        variants.append(clip)
    scores = _predict(engine, np.stack([model_input] + variants))
    base = float(scores[0])
    spatial = (base - scores[1:1 + grid * grid]).reshape(grid, grid)
    temporal = base - scores[1 + grid * grid:]
    return base, spatial, temporal


def _overlay(background: np.ndarray, weights: np.ndarray, scale: float) -> np.ndarray:
    """Background grey (S, S) uint8 with signed weights (grid, grid): red up, blue down."""
    size = background.shape[0]
    smooth = cv2.resize(weights.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
    alpha = np.clip(np.abs(smooth) / scale, 0, 1)[..., None] * 0.6 if scale > 0 else np.zeros((size, size, 1))
    colour = np.zeros((size, size, 3), np.float32)
    colour[smooth > 0] = (230, 40, 30)
    colour[smooth <= 0] = (30, 90, 230)
    grey = np.repeat(background[..., None].astype(np.float32), 3, axis=2)
    return (grey * (1 - alpha) + colour * alpha).astype(np.uint8)


def heat_map(spool_file: Path, cache_dir: Path, config: Config, checkpoint: Path, file_sha256: str) -> dict:
    """Occlusion heat map of the serving checkpoint for this clip (cached); returns
    {"png": path, "score": ..., "frames": [...], "max_change": ...}."""
    from angiogate.engines.model import file_digest

    digest = file_digest(checkpoint)[:12]
    stem = cache_dir / f"{file_sha256[:32]}-{digest}-heat"
    png, meta = stem.with_suffix(".png"), stem.with_suffix(".json")
    if png.exists() and meta.exists():
        return json.loads(meta.read_text()) | {"png": str(png)}
    with _heat_lock:
        engine = review_engine(checkpoint)
        info = engine.info
        chosen = sampling(spool_file, config, engine)
        frames = decode_frames(spool_file, chosen.indices)
        model_input = to_model_input(frames, size=info.crop_size, mean=info.mean, std=info.std,
                                     channels=info.input_channels)
        base, spatial, temporal = occlusion(engine, model_input)
    grey = grey_clip(frames, size=info.crop_size)
    background = (grey.min(axis=0) * 255).astype(np.uint8)  # darkest over time: the filled vessels
    largest = float(np.abs(spatial).max())
    # Full colour needs a change of at least MIN_FULL_COLOUR: an untrained or indifferent model's
    # noise-level changes stay faint instead of being stretched into a confident-looking map.
    scale = max(largest, MIN_FULL_COLOUR)
    view = 320
    left = cv2.resize(background, (view, view), interpolation=cv2.INTER_LINEAR)
    right = _overlay(left, spatial, scale)
    sheet = np.full((view, 2 * view + 8, 3), 255, np.uint8)
    sheet[:, :view] = left[..., None]
    sheet[:, view + 8:] = right
    buffer = io.BytesIO()
    Image.fromarray(sheet).save(buffer, format="PNG")
    _atomic_write(png, buffer.getvalue())
    result = {"score": round(base, 4), "model_version": engine.version, "frame_indices": chosen.indices,
              "frame_changes": [round(float(v), 4) for v in temporal], "max_change": round(largest, 4),
              "grid": GRID}
    _atomic_write(meta, json.dumps(result).encode())
    return result | {"png": str(png)}
