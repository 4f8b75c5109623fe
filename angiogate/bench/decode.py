"""Decode plus preprocess per clip, as the judge does it, for each transfer syntax.

Per clip, the judge's own steps (`angiogate.clip.input`): which frames
(`sampled_indices`, in seconds, as configured), decode only those
(`decode_frames`), and turn them into the model's input (`to_model_input`). The header is read before the clock starts. Every clip
is timed once untimed (warm page cache and decoder imports), then
`repeats` times.
"""

from __future__ import annotations

import time
from pathlib import Path

from angiogate.bench.phantoms import CAVEAT, PhantomSet
from angiogate.bench.stats import summary
from angiogate.config import Config

SYNTAXES = {"explicit": "Explicit VR Little Endian", "jpeg-lossless": "JPEG Lossless SV1"}


def time_clip(path: Path, header, config: Config, *, samples: int, size: int, mean: float,
              std: float, channels: str = "grey") -> tuple[float, float]:
    """(decode ms, preprocess ms) of one clip; frame selection counts as decode."""
    from angiogate.clip.decode import decode_frames
    from angiogate.clip.input import FrameSampling, sampled_indices
    from angiogate.clip.preprocess import to_model_input

    t0 = time.perf_counter()
    frames = decode_frames(path, sampled_indices(header, samples, FrameSampling.of(config)))
    t1 = time.perf_counter()
    to_model_input(frames, size=size, mean=mean, std=std, channels=channels)
    t2 = time.perf_counter()
    return (t1 - t0) * 1000, (t2 - t1) * 1000


def run(config: Config, phantoms: PhantomSet, model, *, clips: int, repeats: int, progress=None) -> dict:
    from angiogate.dicom.header import read_header

    result = {"clip_shape": phantoms.shape, "frames_sampled": model.num_frames,
              "model_input": f"{model.num_frames}x{model.crop_size}x{model.crop_size}",
              "note": CAVEAT, "syntaxes": {}}
    for syntax, name in SYNTAXES.items():
        paths = phantoms.clips(syntax, clips)
        headers = [read_header(p) for p in paths]
        decode_ms, preprocess_ms, total_ms = [], [], []
        for rep in range(repeats + 1):
            for path, header in zip(paths, headers):
                d, p = time_clip(path, header, config, samples=model.num_frames, size=model.crop_size,
                                 mean=model.mean, std=model.std, channels=model.input_channels)
                if rep > 0:  # the first pass warms caches and is not counted
                    decode_ms.append(d)
                    preprocess_ms.append(p)
                    total_ms.append(d + p)
            if progress:
                progress(f"decode: {syntax} pass {rep}/{repeats}")
        sizes = [p.stat().st_size for p in paths]
        result["syntaxes"][syntax] = {
            "transfer_syntax": name, "clips": len(paths), "repeats": repeats,
            "file_mb": round(sum(sizes) / len(sizes) / 1e6, 2),
            "total_ms": summary(total_ms), "decode_ms": summary(decode_ms),
            "preprocess_ms": summary(preprocess_ms),
        }
    return result
