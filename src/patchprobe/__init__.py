"""patchprobe: probe frozen audio encoders through their patch tokens.

The data flow, one sub-package each: audio -> encoders -> bank -> probes -> train -> report
(and `export` for deployment);
datasets feed audio and labels in. The names below are the public API the CLI also uses.
"""

__version__ = "0.1.0"

from .bank import Bank, BankSplit, extract_bank  # noqa: E402
from .datasets import ManifestDataset, SyntheticConfig, create_dataset, load_synthetic_dataset  # noqa: E402
from .encoders import create_encoder  # noqa: E402
from .errors import AudioError, BankError, ManifestError, PatchprobeError  # noqa: E402
from .export import export_onnx, export_packed, export_run, load_packed  # noqa: E402
from .probes import PROBES, create_probe  # noqa: E402
from .report import analyze_run, collect_runs  # noqa: E402
from .train import TrainConfig, fit, load_probe, train_probes  # noqa: E402

__all__ = [
    "AudioError",
    "Bank",
    "BankError",
    "BankSplit",
    "ManifestDataset",
    "ManifestError",
    "PROBES",
    "PatchprobeError",
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
    "export_run",
    "extract_bank",
    "fit",
    "load_packed",
    "load_probe",
    "load_synthetic_dataset",
    "train_probes",
]
