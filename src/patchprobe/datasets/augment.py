"""Offline mixup variants of the training clips (BirdSet few-shot protocol), stored beside the clean clips.

Each training clip gets `variants` extra clips `<id>#mix<v>`. A variant is mixed with probability `p`:
1..`max_partners` other training clips, each scaled to an SNR drawn uniformly from `snr_db` relative to
the clip (power over the clip's length; partners cut or zero-padded to it); its labels are the union.
Otherwise the variant is the clean clip. Every recipe (partners, SNRs) follows from (seed, clip
position, variant), is listed in the bank's metadata, and `recipe(id)` regenerates it.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict

from ..errors import DatasetError
from .._io import stable_hash
from .base import AudioDataset, Clip


class MixupConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    variants: int = 5
    p: float = 0.9
    max_partners: int = 3
    snr_db: tuple[float, float] = (2.0, 30.0)
    seed: int = 0


class MixupAugmented(AudioDataset):
    """`base` with mixup variants added to its train split (other splits unchanged)."""

    def __init__(self, base: AudioDataset, config: MixupConfig | None = None) -> None:
        self.base, self.config = base, config or MixupConfig()
        if not base.multilabel:
            raise DatasetError(f"{base.name}: mixup makes multi-label targets (the union of the mixed clips' labels); "
                               "use it on multi-label datasets only")
        if self.config.variants < 1 or not 0 <= self.config.p <= 1 or self.config.max_partners < 1:
            raise DatasetError(f"mixup: need variants >= 1, 0 <= p <= 1, max_partners >= 1 (got {self.config})")
        self.name = f"{base.name}+mixup{self.config.variants}"
        train = base.clip_ids("train")
        self._recipes: dict[str, dict] = {}
        ids: list[str] = []
        for position, clip_id in enumerate(train):
            ids.append(clip_id)
            for variant in range(self.config.variants):
                variant_id = f"{clip_id}#mix{variant}"
                self._recipes[variant_id] = self._draw(train, position, variant)
                ids.append(variant_id)
        self._train = ids

    def _draw(self, train: list[str], position: int, variant: int) -> dict:
        rng = np.random.default_rng([self.config.seed, position, variant])
        partners: list[str] = []
        snrs: list[float] = []
        if len(train) > 1 and rng.random() < self.config.p:
            count = int(rng.integers(1, min(self.config.max_partners, len(train) - 1) + 1))
            others = [i for i in range(len(train)) if i != position]
            partners = [train[i] for i in rng.choice(others, size=count, replace=False)]
            snrs = [round(float(v), 3) for v in rng.uniform(*self.config.snr_db, size=count)]
        return {"clip": train[position], "variant": variant, "partners": partners, "snr_db": snrs}

    def recipe(self, clip_id: str) -> dict:
        """How variant `clip_id` is made: {"clip", "variant", "partners", "snr_db"}."""
        return dict(self._recipes[clip_id])

    @property
    def classes(self) -> list[str]:
        return self.base.classes

    @property
    def multilabel(self) -> bool:
        return True

    @property
    def metrics(self) -> list[str]:
        return self.base.metrics

    def clip_ids(self, split: str) -> list[str]:
        return list(self._train) if split == "train" else self.base.clip_ids(split)

    def labels_of(self, clip_id: str) -> np.ndarray:
        if clip_id not in self._recipes:
            return self.base.labels_of(clip_id)
        recipe = self._recipes[clip_id]
        vectors = [self.base.labels_of(c) for c in [recipe["clip"], *recipe["partners"]]]
        return np.max(np.stack(vectors), axis=0)

    def audio_stamp(self, clip_id: str) -> str | None:
        """A variant's audio is its recipe over its clips' audio: the stamps of the clip and its partners and
        the recipe, hashed (None when any part cannot tell)."""
        if clip_id not in self._recipes:
            return self.base.audio_stamp(clip_id)
        recipe = self._recipes[clip_id]
        parts = [self.base.audio_stamp(c) for c in [recipe["clip"], *recipe["partners"]]]
        if any(part is None for part in parts):
            return None
        return "mix:" + stable_hash({"stamps": parts, "snr_db": recipe["snr_db"]}, length=24)

    def load(self, clip_id: str, target_sr: int | None = None) -> Clip:
        if clip_id not in self._recipes:
            return self.base.load(clip_id, target_sr)
        recipe = self._recipes[clip_id]
        clean = self.base.load(recipe["clip"], target_sr)
        mixed = clean.waveform.astype(np.float64)
        power = float(np.mean(mixed**2))
        for partner_id, snr in zip(recipe["partners"], recipe["snr_db"]):
            partner = self.base.load(partner_id, clean.sample_rate).waveform[: mixed.size].astype(np.float64)
            partner = np.pad(partner, (0, mixed.size - partner.size))
            partner_power = float(np.mean(partner**2))
            if partner_power > 0 and power > 0:
                mixed += partner * np.sqrt(power / (partner_power * 10 ** (snr / 10)))
        return Clip(clip_id, mixed.astype(np.float32), clean.sample_rate, self.labels_of(clip_id), "train")

    def source(self) -> dict:
        return {**self.base.source(), "augmentation": {"mixup": self.config.model_dump(mode="json"), "recipes": self._recipes}}

    def describe(self) -> dict:
        return {**super().describe(), "splits_from": self.base.name}

