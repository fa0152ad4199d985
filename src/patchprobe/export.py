"""Deploy trained probes: bit-packed binary prototypes (`packed`) and ONNX graphs (`onnx`), the latter either of
the probe alone (token map -> logits) or, with `with_encoder`, of the whole pipeline (waveform -> class scores).

`packed` stores protobin's prototypes as 1 bit per entry (bit 1 = +1, bit 0 = -1; numpy `packbits`
order, most significant bit first) in a safetensors file, beside the float32 linear head and the
metadata needed to rebuild the probe. The binary prototypes are all the forward pass uses, so
`load_packed` gives exactly the trained module's logits.

The whole-pipeline graph (`export_pipeline`) holds the Kaldi fbank front-end as one strided convolution
(framing, DC removal, pre-emphasis, window and DFT are linear in the samples, so they fold into one
kernel; ONNX has no complex FFT output), the encoder and the probe. Every ONNX file carries the class
names, the encoder's name and settings, the probe and the decision thresholds in its metadata_props
(keys `patchprobe.*`).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.numpy import save_file as save_numpy
from torch import nn

from ._io import atomic_write_with
from ._version import __version__
from .audio import FbankConfig
from .audio.fbank import _EPS, _mel_filters, _window
from .encoders import ChunkedFbankViT, Encoder
from .encoders.vit import SpectrogramViT
from .errors import ExportError
from .predict import Decisions, rebuild_encoder
from .probes import Probe, ProtoBinProbe, create_probe
from .probes.prototypes import binarize
from .train import Run

PACKED_FORMAT = "patchprobe-protobin-packed/1"
FORMATS = ("packed", "onnx")
__all__ = ["ExportError", "FORMATS", "PACKED_FORMAT", "FbankConvolution", "WaveformPipeline", "example_inputs", "export_onnx",
           "export_packed", "export_pipeline", "export_run", "load_packed", "onnx_metadata"]


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None, with_encoder: bool = False,
               encoder_args: dict | None = None, check_seconds: tuple[float, ...] | None = None) -> dict:
    """Export the probe of a run folder; returns {"path", "bytes", ...} (ONNX adds "max_abs_diff").

    Args:
        run_dir: a folder written by `fit` / `patchprobe train`.
        fmt: "packed" (protobin only) or "onnx" (any probe).
        out: output file (default: RUN_DIR/probe.packed.safetensors, RUN_DIR/probe.onnx or, with the encoder,
            RUN_DIR/pipeline.onnx).
        with_encoder: ONNX of waveform -> class scores (front-end + encoder + probe; see `export_pipeline`);
            the encoder is rebuilt from the run (`predict.rebuild_encoder`, `encoder_args` as there).
        check_seconds: clip lengths the pipeline is checked on against PyTorch (default: see `export_pipeline`).
    """
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    if with_encoder and fmt != "onnx":
        raise ExportError(f"--with-encoder exports an ONNX graph; use --format onnx (got {fmt!r})")
    run = Run(run_dir)
    probe = run.probe()
    if fmt == "packed":
        path = Path(out or run_dir / "probe.packed.safetensors")
        return export_packed(probe, path, classes=run.bank.classes, encoder=run.bank.encoder)
    decisions = Decisions.from_run(run, run.bank.classes)
    if with_encoder:
        encoder = rebuild_encoder(run, overrides=encoder_args)
        return export_pipeline(encoder, probe, Path(out or run_dir / "pipeline.onnx"), classes=run.bank.classes,
                               decisions=decisions, check_seconds=check_seconds)
    metadata = onnx_metadata(run.bank.classes, decisions, probe, encoder_name=run.bank.encoder,
                             encoder_config=_recorded_encoder_config(run), encoder_config_hash=run.bank.encoder_config_hash,
                             inputs="tokens float32 (B, T, F, D), mask bool (B, T, F)"
                                    + (", global_vector float32 (B, G)" if probe.uses_global else "") + "; output logits (B, C)")
    return export_onnx(probe, Path(out or run_dir / "probe.onnx"), metadata=metadata)


def _recorded_encoder_config(run: Run) -> dict:
    from .predict import encoder_config_of

    return encoder_config_of(run)


def onnx_metadata(classes: list[str], decisions: Decisions, probe: Probe, encoder_name: str, encoder_config: dict,
                  encoder_config_hash: str, inputs: str) -> dict[str, str]:
    """The metadata_props every patchprobe ONNX file carries (string values; JSON where structured)."""
    return {
        "patchprobe.version": __version__,
        "patchprobe.classes": json.dumps(list(classes)),
        "patchprobe.multilabel": json.dumps(decisions.multilabel),
        "patchprobe.thresholds": json.dumps(decisions.to_json()),
        "patchprobe.probe": probe.name,
        "patchprobe.encoder": encoder_name,
        "patchprobe.encoder_config": json.dumps(encoder_config, sort_keys=True),
        "patchprobe.encoder_config_hash": encoder_config_hash,
        "patchprobe.io": inputs,
    }


def _write_metadata(path: Path, metadata: dict[str, str] | None) -> None:
    if not metadata:
        return
    import onnx

    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def export_packed(probe: ProtoBinProbe, path: str | Path, classes: list[str] | None = None, encoder: str = "") -> dict:
    """Write protobin's binary prototypes (1 bit per entry) and its linear head to `path`.

    Returns {"path", "bytes", "prototype_bytes", "float32_prototype_bytes"}.
    """
    if not isinstance(probe, ProtoBinProbe) or not probe.binary:
        raise ExportError(
            f"packed export needs binary prototypes (probe 'protobin'); this run holds {probe.name!r}. "
            "Use --format onnx for any probe."
        )
    with torch.no_grad():
        signs = binarize(probe.prototypes.detach().cpu()).numpy()  # (M, D) in {-1, +1}
    bits = np.packbits(signs > 0, axis=1)  # (M, ceil(D / 8)) uint8
    tensors = {
        "prototype_bits": bits,
        "head.weight": probe.head.weight.detach().cpu().float().numpy(),
        "head.bias": probe.head.bias.detach().cpu().float().numpy(),
    }
    metadata = {
        "format": PACKED_FORMAT,
        "token_dim": str(probe.token_dim),
        "num_classes": str(probe.num_classes),
        "prototypes_per_class": str(probe.prototypes_per_class),
        "classes": json.dumps(classes or []),
        "encoder": encoder,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda tmp: save_numpy(tensors, str(tmp), metadata=metadata))
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "prototype_bytes": int(bits.nbytes),
        "float32_prototype_bytes": int(signs.size * 4),
    }


def load_packed(path: str | Path) -> ProtoBinProbe:
    """Rebuild a protobin probe (eval mode) from a packed file; its `classes` attribute names the outputs."""
    from safetensors import safe_open

    path = Path(path)
    if not path.exists():
        raise ExportError(f"{path}: no such packed probe file")
    with safe_open(str(path), framework="numpy") as handle:
        metadata = handle.metadata() or {}
        if metadata.get("format") != PACKED_FORMAT:
            raise ExportError(f"{path}: not a packed protobin file (format {metadata.get('format')!r}, expected {PACKED_FORMAT!r})")
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    dim = int(metadata["token_dim"])
    signs = np.unpackbits(tensors["prototype_bits"], axis=1, count=dim).astype(np.float32) * 2.0 - 1.0
    probe = create_probe(
        "protobin", token_dim=dim, num_classes=int(metadata["num_classes"]),
        prototypes_per_class=int(metadata["prototypes_per_class"]),
    )
    state = {"prototypes": torch.from_numpy(signs), "head.weight": torch.from_numpy(tensors["head.weight"]),
             "head.bias": torch.from_numpy(tensors["head.bias"])}
    probe.load_state_dict(state)
    probe.classes = json.loads(metadata.get("classes", "[]"))
    probe.encoder = metadata.get("encoder", "")
    return probe.eval()


def example_inputs(probe, batch: int = 2, time: int = 5, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random inputs matching a probe's signature: tokens (B, T, F, D), mask (B, T, F) with padding, global (B, G)."""
    gen = torch.Generator().manual_seed(seed)
    freq = probe.freq_tokens or 1
    inputs = {"tokens": torch.randn(batch, time, freq, probe.token_dim, generator=gen),
              "mask": torch.ones(batch, time, freq, dtype=torch.bool)}
    inputs["mask"][-1, time - 2 :] = False  # the last clip is shorter: padding must be ignored
    if probe.uses_global:
        inputs["global_vector"] = torch.randn(batch, probe.global_dim, generator=gen)
    return inputs


def _write_onnx(path: Path, export: Callable[[Path], None], metadata: dict[str, str], what: str) -> None:
    """Run `export(tmp)` quietly, add `metadata` to the graph and move it to `path` atomically.

    The exporter logs about absent torchvision ops and renamed axes and prints progress; none of it
    concerns the user. Any failure becomes an ExportError naming `what`, with the cause kept.
    """

    def write(tmp: Path) -> None:
        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        exporter_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                export(tmp)
        finally:
            exporter_log.setLevel(level)
        _write_metadata(tmp, metadata)

    try:
        atomic_write_with(path, write)
    except Exception as exc:  # the exporter raises many types; name what was exported and keep the cause
        raise ExportError(f"ONNX export of {what} failed: {type(exc).__name__}: {exc}") from exc


def export_onnx(probe, path: str | Path, opset: int = 18, metadata: dict[str, str] | None = None) -> dict:
    """Write `probe` as an ONNX graph with dynamic batch and time axes, then check it with onnxruntime.

    Graph inputs: tokens float32 (B, T, F, D), mask bool (B, T, F) and, for heads that read it,
    global_vector float32 (B, G); output: logits (B, C). `metadata` goes into the file's metadata_props.
    Returns {"path", "bytes", "max_abs_diff"} (onnxruntime vs PyTorch on fresh random inputs).
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'patchprobe[export]'") from exc
    probe = probe.eval().cpu()
    inputs = example_inputs(probe, batch=2, time=5)
    batch, time = torch.export.Dim("batch"), torch.export.Dim("time")
    shapes = {"tokens": {0: batch, 1: time}, "mask": {0: batch, 1: time}}
    if "global_vector" in inputs:
        shapes["global_vector"] = {0: batch}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def export(tmp: Path) -> None:
        program = torch.onnx.export(probe, (), kwargs=inputs, dynamic_shapes=shapes, dynamo=True, opset_version=opset,
                                    input_names=list(inputs), output_names=["logits"], verbose=False)
        program.save(str(tmp), external_data=False)

    _write_onnx(path, export, metadata, repr(probe.name))
    check = example_inputs(probe, batch=3, time=7, seed=1)  # other sizes than the traced ones
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in check.items()})[0]
    with torch.no_grad():
        expected = probe(**check).numpy()
    return {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": float(np.abs(got - expected).max())}


# ---- the whole pipeline: waveform -> class scores ---------------------------------------------------------------------


class FbankConvolution(nn.Module):
    """`kaldi_fbank` as one strided convolution, for export (ONNX has no complex FFT output).

    Per frame, DC removal, pre-emphasis, the window and the real DFT are linear in the samples, so their
    product is one (2K, window) kernel (K = n_fft / 2 + 1 bins, real and imaginary rows); the power
    spectrum, the mel filters and the log follow. Matches `kaldi_fbank` to float32 rounding.

    forward: waveforms (B, N) -> log-mel (B, frames, mel), frames = 1 + (N - window) // shift.
    """

    def __init__(self, config: FbankConfig) -> None:
        super().__init__()
        size, n_fft = config.window_size, config.n_fft
        linear = torch.eye(size, dtype=torch.float64)
        if config.remove_dc_offset:
            linear = linear - 1.0 / size
        if config.preemphasis:
            shift = torch.diag(torch.ones(size - 1, dtype=torch.float64), -1)
            shift[0, 0] = 1.0  # Kaldi's first sample is pre-emphasised against itself
            linear = (torch.eye(size, dtype=torch.float64) - config.preemphasis * shift) @ linear
        linear = _window(config).double()[:, None] * linear
        bins = torch.arange(n_fft // 2 + 1, dtype=torch.float64)[:, None] * torch.arange(size, dtype=torch.float64)[None, :]
        angle = 2 * torch.pi * bins / n_fft
        kernel = torch.cat([torch.cos(angle) @ linear, -torch.sin(angle) @ linear])  # (2K, window)
        self.register_buffer("kernel", kernel.float()[:, None, :])
        self.register_buffer("mel", _mel_filters(config).T.contiguous())  # (K, mel)
        self.shift, self.bins = config.window_shift, n_fft // 2 + 1

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        spectrum = F.conv1d(waveforms[:, None, :], self.kernel, stride=self.shift)  # (B, 2K, frames)
        power = spectrum[:, : self.bins].square() + spectrum[:, self.bins :].square()
        return torch.log(torch.clamp(power.transpose(1, 2) @ self.mel, min=_EPS))


class WaveformPipeline(nn.Module, ABC):
    """waveform (B, N) at the encoder's rate, one clip per row, no padding -> class scores (B, C)
    (sigmoid probabilities for multi-label runs, softmax for multi-class).

    Subclasses reproduce an encoder family's recipe from the fbank on; `dynamic_length` says whether any
    N >= the encoder's minimum works in one graph.
    """

    dynamic_length = True

    def __init__(self, model: nn.Module, probe: Probe, layer: int | None, multilabel: bool) -> None:
        super().__init__()
        self.model, self.probe, self.layer, self.multilabel = model, probe, layer, multilabel
        self.front_end = FbankConvolution(model.fbank)

    def log_mel(self, waveforms: torch.Tensor) -> torch.Tensor:
        """The recipe's fbank: each clip's mean removed first."""
        return self.front_end(waveforms - waveforms.mean(dim=1, keepdim=True))

    @abstractmethod
    def tokens(self, waveforms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens (B, T, F, D), mask (B, T, F), global vector (B, G)) as the encoder gives them."""

    def forward(self, waveforms: torch.Tensor) -> torch.Tensor:
        tokens, mask, global_vector = self.tokens(waveforms)
        logits = self.probe(tokens, mask, global_vector if self.probe.uses_global else None)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, dim=-1)


class _SpectrogramViTPipeline(WaveformPipeline):
    """tiny-mae / toy-vit: normalised fbank padded to whole patches; sin-cos positions fit any length."""

    def tokens(self, waveforms):
        config = self.model.config
        spec = (self.log_mel(waveforms) - config.fbank_mean) / (2 * config.fbank_std)
        frames = spec.shape[1]
        spec = F.pad(spec, (0, 0, 0, (-frames) % config.patch_size))
        lengths = torch.full((spec.shape[0],), frames, dtype=torch.long, device=spec.device)
        return self.model.forward_tokens(spec, lengths, self.layer)


class _ChunkedViTPipeline(WaveformPipeline):
    """EAT, SSLAM, Audio-MAE, ASiT, Bird-MAE: fbank zero-padded to whole model inputs (before normalisation),
    chunks run independently, token maps concatenated, the clip vector averaged over chunks.

    One graph takes one input length (the model's `target_frames`): the chunk count is data the exporter
    cannot keep symbolic through these models' fixed position tables, so longer audio is cut into windows
    outside the graph (as `patchprobe predict` does).
    """

    dynamic_length = False

    def tokens(self, waveforms):
        config = self.model.config
        spec = self.log_mel(waveforms)
        frames, target = spec.shape[1], config.target_frames
        chunks = max(1, -(-frames // target))
        spec = F.pad(spec, (0, 0, 0, chunks * target - frames))
        spec = (spec - config.fbank_mean) / (2 * config.fbank_std)
        batch = spec.shape[0]
        time_patches, freq_patches = config.grid
        sequence = self.model.forward_chunks(spec.reshape(batch * chunks, target, -1), self.layer)
        tokens = sequence[:, 1:].reshape(batch, chunks * time_patches, freq_patches, -1)
        starts = torch.arange(chunks * time_patches, device=spec.device) * config.patch_size
        mask = (starts < frames)[None, :, None].expand(batch, -1, freq_patches)
        global_vector = self.model.pool(sequence).reshape(batch, chunks, -1).mean(dim=1)
        return tokens, mask, global_vector


# Exportable encoder networks, most specific first: the network class -> its pipeline.
PIPELINES: dict[type, type[WaveformPipeline]] = {SpectrogramViT: _SpectrogramViTPipeline, ChunkedFbankViT: _ChunkedViTPipeline}


def _pipeline_for(encoder: Encoder, probe: Probe, multilabel: bool) -> WaveformPipeline:
    model = getattr(encoder, "model", None)
    for network, pipeline in PIPELINES.items():
        if isinstance(model, network):
            return pipeline(model, probe, getattr(encoder, "layer", None), multilabel).eval()
    raise ExportError(
        f"--with-encoder exports plain-PyTorch fbank ViTs (tiny-mae, toy-vit, eat-*, sslam*, audiomae, asit, birdmae-*); "
        f"encoder {encoder.name!r} ({type(model).__name__}) has another front-end. Export the probe alone (without "
        "--with-encoder) and run the encoder beside it."
    )


def export_pipeline(encoder: Encoder, probe: Probe, path: str | Path, classes: list[str], decisions: Decisions,
                    check_seconds: tuple[float, ...] | None = None, opset: int = 18) -> dict:
    """Write one ONNX graph from waveform to class scores (front-end + encoder + probe), then check it.

    Graph input `waveform` float32 (B, N): mono at the encoder's sample rate, one clip per row, N >= one
    fbank window; output `scores` (B, C). tiny-mae-style ViTs take any N (dynamic length axis); the chunked
    checkpoint ViTs take N = their input length (`target_frames`, e.g. 10.24 s), said in the result.

    Args:
        check_seconds: clip lengths compared with PyTorch (`Encoder.encode` + probe, as `patchprobe predict`
            scores): default 1.3 s, the natural window and 1.7 windows for dynamic graphs; the window for fixed ones.
    Returns:
        {"path", "bytes", "dynamic_length", "input_samples" (None when dynamic), "checked": {seconds: max |diff|},
         "max_abs_diff", "statement"}
    """
    try:
        import onnxruntime
    except ImportError as exc:
        raise ExportError("ONNX export needs onnx, onnxscript and onnxruntime: pip install 'patchprobe[export]'") from exc
    probe = probe.eval().cpu()
    if str(getattr(encoder, "device", "cpu")) != "cpu":
        raise ExportError("export the pipeline from an encoder on the CPU (device='cpu')")
    pipeline = _pipeline_for(encoder, probe, decisions.multilabel)
    rate = encoder.sample_rate
    natural = encoder.clip_seconds or 10.0
    fixed = None if pipeline.dynamic_length else int(round(pipeline.model.config.input_seconds * rate))
    example = torch.randn(2, fixed or int(natural * rate), generator=torch.Generator().manual_seed(0)) * 0.1
    # AUTO: the exporter derives the frame and patch counts from the sample axis itself
    axes = {0: torch.export.Dim.AUTO} | ({} if fixed else {1: torch.export.Dim.AUTO})
    statement = ("dynamic length: any clip of at least one patch of frames" if not fixed else
                 f"fixed input of {fixed} samples ({fixed / rate:g} s, the model's input length): cut longer audio into windows "
                 "of that length (and zero-pad shorter clips) before the graph")
    metadata = onnx_metadata(classes, decisions, probe, encoder.name, encoder.config(), encoder.config_hash(),
                             f"waveforms float32 (B, N) mono at {rate} Hz, {statement}; output scores (B, C) "
                             f"({'sigmoid' if decisions.multilabel else 'softmax'} probabilities)")
    metadata["patchprobe.sample_rate"] = str(rate)
    metadata["patchprobe.input_samples"] = str(fixed or "dynamic")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def export(tmp: Path) -> None:
        with torch.no_grad():
            program = torch.onnx.export(pipeline, (example,), dynamic_shapes=(axes,), dynamo=True, opset_version=opset,
                                        input_names=["waveforms"], output_names=["scores"], verbose=False)
        program.save(str(tmp), external_data=False)

    _write_onnx(path, export, metadata, f"{encoder.name!r} + {probe.name!r}")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    seconds = check_seconds or ((fixed / rate,) if fixed else (1.3, natural, round(1.7 * natural, 2)))
    checked = {}
    for length in seconds:
        samples = fixed or int(round(length * rate))
        wave = _check_audio(samples, rate)
        got = session.run(None, {"waveforms": wave.numpy()})[0]
        with torch.no_grad():
            out = encoder.encode(wave, torch.full((wave.shape[0],), samples))
            logits = probe(out.tokens.float(), out.mask, out.global_vector if probe.uses_global else None)
            expected = (torch.sigmoid(logits) if decisions.multilabel else torch.softmax(logits, dim=-1)).numpy()
        checked[f"{samples / rate:g}"] = float(np.abs(got - expected).max())
    return {"path": str(path), "bytes": path.stat().st_size, "dynamic_length": fixed is None, "input_samples": fixed,
            "checked": checked, "max_abs_diff": max(checked.values()), "statement": statement}


def _check_audio(samples: int, rate: int) -> torch.Tensor:
    """Two clips unlike training noise: a gliding tone over noise, and noise alone; (2, samples) float32."""
    gen = torch.Generator().manual_seed(samples)
    t = torch.arange(samples, dtype=torch.float64) / rate
    glide = 0.3 * torch.sin(2 * torch.pi * (500 + 300 * t) * t)
    noise = 0.05 * torch.randn(2, samples, generator=gen, dtype=torch.float64)
    return (noise + torch.stack([glide, torch.zeros_like(glide)])).float()
