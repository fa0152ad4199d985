"""patchprobe: probe frozen audio encoders through their patch tokens.

The data flow, one sub-package each, lower layers never importing higher ones (tests/test_architecture.py):
audio -> datasets -> encoders -> bank -> probes -> train -> sweep -> report -> predict -> export -> demo/bench -> cli.
The names below are the public API the CLI also uses.
"""

from ._version import __version__
from .bank import Bank, BankSplit, LoadedBank, extract_bank
from .datasets import ManifestDataset, SyntheticConfig, create_dataset, load_synthetic_dataset
from .encoders import create_encoder
from .errors import AudioError, BankError, CheckpointError, ExportError, ManifestError, PatchprobeError, RunError
from .export import export_onnx, export_packed, export_pipeline, export_run, load_packed
from .predict import Predictor
from .probes import PROBES, create_probe
from .report import analyze_run, collect_runs
from .train import Run, TrainConfig, fit, load_probe, train_probes

__all__ = [
    "AudioError",
    "Bank",
    "BankError",
    "BankSplit",
    "CheckpointError",
    "ExportError",
    "LoadedBank",
    "ManifestDataset",
    "ManifestError",
    "PROBES",
    "PatchprobeError",
    "Predictor",
    "Run",
    "RunError",
    "SyntheticConfig",
    "TrainConfig",
    "__version__",
    "analyze_run",
    "collect_runs",
    "create_dataset",
    "create_encoder",
    "create_probe",
    "export_onnx",
    "export_packed",
    "export_pipeline",
    "export_run",
    "extract_bank",
    "fit",
    "load_packed",
    "load_probe",
    "load_synthetic_dataset",
    "train_probes",
]
