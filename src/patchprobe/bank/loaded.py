"""A bank in memory as one object: its root, its identity, and its loaded splits.

Training, grid and Optuna searches take a `LoadedBank` so the splits read once travel with the
bank they came from (and the identity every run folder records), instead of a (path, splits) pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import BaseModel, ConfigDict

from ..errors import BankError
from .store import Bank, LoadedSplit


class BankIdentity(BaseModel):
    """What a run folder records about the bank it was trained on (`config.json` -> "bank").

    `path` says where the bank was; the other fields say what it held, and decide whether a
    finished run still belongs to a bank (`same_data`).
    """

    model_config = ConfigDict(extra="allow")  # runs written by later versions may record more

    path: str
    encoder: str
    encoder_config_hash: str
    dataset: str
    dataset_fingerprints: dict[str, str]
    classes: list[str]
    multilabel: bool

    def same_data(self, other: "BankIdentity") -> bool:
        """True when both describe the same tokens (encoder, settings, clips, classes), wherever the bank lies."""
        return self.model_dump(exclude={"path"}) == other.model_dump(exclude={"path"})


@dataclass(frozen=True)
class LoadedBank:
    """Every split of a bank in memory on one device.

    Attributes:
        root: the bank folder.
        splits: split name -> LoadedSplit (tokens (N, T, F, D), mask (N, T, F), labels (N, C)); always has "train".
        identity: the bank's identity, as run folders record it.
    """

    root: Path
    splits: dict[str, LoadedSplit]
    identity: BankIdentity

    @classmethod
    def load(cls, root: str | Path, device: str | torch.device = "cpu") -> "LoadedBank":
        """Read every split of the bank at `root` onto `device`; the bank must have a train split."""
        handle = Bank(root)
        if "train" not in handle.splits:
            raise BankError(f"{root}: no train split; extract one with `patchprobe extract`")
        splits = {name: handle.split(name).load(device=device) for name in handle.splits}
        train = splits["train"].meta
        identity = BankIdentity(
            path=str(Path(root).resolve()),
            encoder=train.encoder,
            encoder_config_hash=train.encoder_config_hash,
            dataset=train.dataset,
            dataset_fingerprints={name: split.meta.dataset_fingerprint for name, split in splits.items()},
            classes=train.classes,
            multilabel=train.multilabel,
        )
        return cls(root=Path(root), splits=splits, identity=identity)

    @classmethod
    def coerce(cls, bank: "str | Path | LoadedBank", device: str | torch.device = "cpu") -> "LoadedBank":
        """`bank` itself when already loaded, else the bank folder loaded onto `device` (the path-accepting public API)."""
        return bank if isinstance(bank, LoadedBank) else cls.load(bank, device=device)

    @property
    def train(self) -> LoadedSplit:
        return self.splits["train"]

    @property
    def multilabel(self) -> bool:
        return self.identity.multilabel

    @property
    def evaluation_splits(self) -> dict[str, LoadedSplit]:
        """Every split but train (what a finished run is scored on)."""
        return {name: split for name, split in self.splits.items() if name != "train"}

    def require(self, *names: str, purpose: str) -> None:
        """Raise a BankError naming the bank unless it has the splits `names` (`purpose` says what needs them)."""
        missing = [name for name in names if name not in self.splits]
        if missing:
            raise BankError(f"{self.root}: {purpose} needs the {', '.join(missing)} split(s) (has {', '.join(self.splits)}); "
                            "extract them with `patchprobe extract`")

    def __getitem__(self, name: str) -> LoadedSplit:
        self.require(name, purpose=f"the {name!r} split")
        return self.splits[name]

    def __contains__(self, name: str) -> bool:
        return name in self.splits
