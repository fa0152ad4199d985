"""Deploy trained probes: bit-packed binary prototypes (`packed`) and ONNX graphs (`onnx`).

`packed` stores protobin's prototypes as 1 bit per entry (bit 1 = +1, bit 0 = -1; numpy `packbits`
order, most significant bit first) in a safetensors file, beside the float32 linear head and the
metadata needed to rebuild the probe. The binary prototypes are all the forward pass uses, so
`load_packed` gives exactly the trained module's logits.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import save_file as save_numpy

from ._io import atomic_write_with
from .errors import ExportError
from .probes import ProtoBinProbe, create_probe
from .probes.prototypes import binarize
from .train import Run

PACKED_FORMAT = "patchprobe-protobin-packed/1"
FORMATS = ("packed", "onnx")
__all__ = ["ExportError", "FORMATS", "PACKED_FORMAT", "example_inputs", "export_onnx", "export_packed", "export_run", "load_packed"]


def export_run(run_dir: str | Path, fmt: str, out: str | Path | None = None) -> dict:
    """Export the probe of a run folder; returns {"path", "bytes", ...} (ONNX adds "max_abs_diff").

    Args:
        run_dir: a folder written by `fit` / `patchprobe train`.
        fmt: "packed" (protobin only) or "onnx" (any probe).
        out: output file (default: RUN_DIR/probe.packed.safetensors or RUN_DIR/probe.onnx).
    """
    run_dir = Path(run_dir)
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose from {', '.join(FORMATS)}")
    run = Run(run_dir)
    probe = run.probe()
    if fmt == "packed":
        path = Path(out or run_dir / "probe.packed.safetensors")
        return export_packed(probe, path, classes=run.bank.classes, encoder=run.bank.encoder)
    path = Path(out or run_dir / "probe.onnx")
    return export_onnx(probe, path)


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


def export_onnx(probe, path: str | Path, opset: int = 18) -> dict:
    """Write `probe` as an ONNX graph with dynamic batch and time axes, then check it with onnxruntime.

    Graph inputs: tokens float32 (B, T, F, D), mask bool (B, T, F) and, for heads that read it,
    global_vector float32 (B, G); output: logits (B, C).
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

    def write(tmp: Path) -> None:
        # The exporter logs about absent torchvision ops and renamed axes; none of it concerns a probe.
        exporter_log = logging.getLogger("torch.onnx")
        level = exporter_log.level
        exporter_log.setLevel(logging.ERROR)
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                program = torch.onnx.export(probe, (), kwargs=inputs, dynamic_shapes=shapes, dynamo=True, opset_version=opset,
                                            input_names=list(inputs), output_names=["logits"], verbose=False)
            program.save(str(tmp), external_data=False)
        finally:
            exporter_log.setLevel(level)

    try:
        atomic_write_with(path, write)
    except Exception as exc:  # the exporter raises many types; name the probe and keep the cause
        raise ExportError(f"ONNX export of {probe.name!r} failed: {type(exc).__name__}: {exc}") from exc
    check = example_inputs(probe, batch=3, time=7, seed=1)  # other sizes than the traced ones
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {k: v.numpy() for k, v in check.items()})[0]
    with torch.no_grad():
        expected = probe(**check).numpy()
    return {"path": str(path), "bytes": path.stat().st_size, "max_abs_diff": float(np.abs(got - expected).max())}
