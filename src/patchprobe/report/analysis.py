"""`patchprobe analyze`: what a trained prototype or attentive probe learned, as numbers and figures.

For prototype probes (`protobin`, `protofloat`, `proto`):
- the distribution of pairwise cosine similarities between prototypes (for protobin both the binary
  prototypes the forward pass uses and their real-valued latents), optionally beside another run's;
- dead prototypes, two ways: never the most similar prototype for any valid token of the split
  ("dead"), and never the largest contribution to the logit of a true class of any clip
  ("never winning");
- for a few clips, per-class heatmaps of the winning prototype's similarity over the (T, F) token
  grid, drawn over the clip's log-mel spectrogram.
For attentive probes (`mhca`, `ep`, `simpool`, `abmilp`): the attention map over the token grid.

Everything is written to one folder (default RUN_DIR/analysis): `analysis.json` and PNG files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .._io import write_json
from ..audio import FbankConfig, kaldi_fbank
from ..bank import Bank, LoadedSplit
from ..datasets import reopen_dataset
from ..errors import PatchprobeError
from ..probes import AttentiveProbe, PrototypeProbe
from ..probes.prototypes import ProtoBinProbe
from ..train import Run
from .figures import new_figure, save_figure


def analyze_run(
    run_dir: str | Path,
    out: str | Path | None = None,
    split: str = "test",
    clips: int = 3,
    classes_per_clip: int = 4,
    compare: list[str | Path] | None = None,
    manifest: str | Path | None = None,
    batch_size: int = 16,
) -> dict:
    """Analyse the probe of a run folder on one split of its bank; returns what `analysis.json` holds.

    Args:
        run_dir: folder written by `fit` / `patchprobe train`.
        out: output folder (default RUN_DIR/analysis).
        split: bank split to analyse.
        clips: how many clips get heatmaps (multi-label: clips with the most true classes first).
        classes_per_clip: at most this many true classes (highest logits first) per clip.
        compare: other prototype-probe run folders whose similarity distributions join the histogram.
        manifest: CSV manifest of the bank's audio, for spectrograms; default: the one bank.json records.
        batch_size: clips per step; memory grows with batch x tokens x prototypes.
    """
    run_dir = Path(run_dir)
    run = Run(run_dir)
    probe = run.probe()
    bank = Bank(run.bank.path)
    if split not in bank.splits:
        raise PatchprobeError(f"{bank.root}: no split {split!r} (has {', '.join(bank.splits)})")
    data = bank.split(split).load()
    out = Path(out or run_dir / "analysis")
    out.mkdir(parents=True, exist_ok=True)
    audio = _AudioSource(bank, manifest)
    report: dict = {"run": str(run_dir), "probe": probe.name, "split": split, "clips": len(data), "figures": []}
    if isinstance(probe, PrototypeProbe):
        report.update(_prototype_report(probe, data, out, compare or [], clips, classes_per_clip, audio, batch_size))
    elif isinstance(probe, AttentiveProbe):
        report.update(_attention_report(probe, data, out, clips, audio))
    else:
        raise PatchprobeError(
            f"{run_dir}: analyze explains prototype probes (proto, protobin, protofloat) and attentive probes "
            f"(mhca, ep, simpool, abmilp); {probe.name!r} pools with a fixed rule, so there is nothing learned to show"
        )
    report["spectrograms"] = audio.status
    write_json(out / "analysis.json", report)
    return report


# --- prototype probes ---------------------------------------------------------------------------


def pairwise_cosines(vectors: torch.Tensor) -> np.ndarray:
    """Cosine similarity of every unordered pair of rows. vectors: (M, D) -> (M (M - 1) / 2,)."""
    unit = F.normalize(vectors.detach().float(), dim=-1)
    gram = unit @ unit.T
    upper = torch.triu_indices(len(unit), len(unit), offset=1)
    return gram[upper[0], upper[1]].numpy()


def _cosine_summary(values: np.ndarray) -> dict:
    return {"mean": float(values.mean()), "sd": float(values.std()), "mean_abs": float(np.abs(values).mean()),
            "p01": float(np.quantile(values, 0.01)), "p99": float(np.quantile(values, 0.99)), "pairs": int(values.size)}


@torch.no_grad()
def prototype_usage(probe: PrototypeProbe, data: LoadedSplit, batch_size: int = 64) -> dict[str, np.ndarray]:
    """How each prototype is used on a split.

    Returns {"token_wins": (M,) how many valid tokens have prototype m as their most similar one,
    "class_wins": (M,) how many (clip, true class) pairs have m as the largest contribution to the
    class logit, "descriptor": (N, M) max similarities, "logits": (N, C)}.
    """
    probe.eval()
    token_wins = torch.zeros(probe.num_prototypes, dtype=torch.long)
    class_wins = torch.zeros(probe.num_prototypes, dtype=torch.long)
    descriptors, logits = [], []
    for start in range(0, len(data), batch_size):
        batch = data.batch(torch.arange(start, min(start + batch_size, len(data))))
        sims = probe.similarities(batch["tokens"], batch["mask"])  # (B, T, F, M)
        winners = sims.argmax(dim=-1)[batch["mask"]]
        token_wins += torch.bincount(winners, minlength=probe.num_prototypes)
        descriptor = sims.amax(dim=(1, 2))
        clips, classes = torch.nonzero(batch["labels"] > 0, as_tuple=True)  # every (clip, true class) pair
        if len(clips):
            best = probe.class_contributions(descriptor[clips], classes).argmax(dim=-1)
            class_wins += torch.bincount(best, minlength=probe.num_prototypes)
        descriptors.append(descriptor)
        logits.append(probe.classify(descriptor))  # the forward pass without recomputing similarities
    return {"token_wins": token_wins.numpy(), "class_wins": class_wins.numpy(),
            "descriptor": torch.cat(descriptors).numpy(), "logits": torch.cat(logits).numpy()}


def _prototype_report(probe, data, out, compare, clips, classes_per_clip, audio, batch_size) -> dict:
    distributions: dict[str, np.ndarray] = {}
    if isinstance(probe, ProtoBinProbe) and probe.binary:
        distributions["protobin: binary prototypes (used)"] = pairwise_cosines(probe.prototype_vectors())
        distributions["protobin: real-valued latents"] = pairwise_cosines(probe.prototypes)
    else:
        distributions[f"{probe.name}: prototypes"] = pairwise_cosines(probe.prototype_vectors())
    for other in compare:
        other_probe = Run(other).probe()
        if not isinstance(other_probe, PrototypeProbe):
            raise PatchprobeError(f"{other}: --compare needs a prototype-probe run, this one holds {other_probe.name!r}")
        distributions[f"{other_probe.name} ({'/'.join(Path(other).parts[-2:])}): prototypes"] = pairwise_cosines(other_probe.prototype_vectors())
    hist_path = out / "prototype_similarity.png"
    _similarity_histogram(distributions, probe.token_dim, hist_path)

    usage = prototype_usage(probe, data, batch_size)
    dead = np.flatnonzero(usage["token_wins"] == 0)
    never_winning = np.flatnonzero(usage["class_wins"] == 0)
    usage_path = out / "prototype_usage.png"
    _usage_plot(usage["token_wins"], usage["class_wins"], probe, usage_path)
    figures = [hist_path.name, usage_path.name]
    for index in _pick_clips(data, clips):
        path = out / f"heatmap_{_safe(data.meta.clip_ids[index])}.png"
        _prototype_heatmaps(probe, data, index, usage["logits"][index], classes_per_clip, audio, path)
        figures.append(path.name)
    return {
        "num_prototypes": probe.num_prototypes,
        "prototypes_per_class": probe.prototypes_per_class,
        "token_dim": probe.token_dim,
        "cosine_similarity": {name: _cosine_summary(values) for name, values in distributions.items()},
        "random_sign_vectors_cosine_sd": 1.0 / np.sqrt(probe.token_dim),
        "dead_prototypes": {"count": int(dead.size), "fraction": float(dead.size / probe.num_prototypes), "indices": dead.tolist(),
                            "definition": "never the most similar prototype for any valid token of the split"},
        "never_winning_prototypes": {"count": int(never_winning.size), "fraction": float(never_winning.size / probe.num_prototypes),
                                     "definition": "never the largest contribution to a true class's logit on any clip"},
        "figures": figures,
    }


def _similarity_histogram(distributions: dict[str, np.ndarray], dim: int, path: Path) -> None:
    figure, axis = new_figure(figsize=(6.4, 3.6), layout="constrained")
    low = min(float(v.min()) for v in distributions.values())
    high = max(float(v.max()) for v in distributions.values())
    bins = np.linspace(min(low, -0.3), max(high, 0.3), 81)
    for name, values in distributions.items():
        axis.hist(values, bins=bins, density=True, histtype="step", linewidth=1.6,
                  label=f"{name}\nmean {values.mean():+.3f}, sd {values.std():.3f}")
    reference = 1.0 / np.sqrt(dim)
    axis.axvspan(-2 * reference, 2 * reference, color="0.85", zorder=0, label=f"±2 sd of random sign vectors (D={dim})")
    axis.set_xlabel("pairwise cosine similarity between prototypes")
    axis.set_ylabel("density")
    axis.legend(fontsize=7, frameon=False)
    axis.set_title("Prototype diversity", fontsize=10)
    save_figure(figure, path)


def _usage_plot(token_wins: np.ndarray, class_wins: np.ndarray, probe: PrototypeProbe, path: Path) -> None:
    figure, axes = new_figure(2, 1, figsize=(7.0, 3.8), sharex=True, layout="constrained")
    index = np.arange(len(token_wins))
    for axis, counts, label in ((axes[0], token_wins, "tokens won"), (axes[1], class_wins, "(clip, class) wins")):
        axis.bar(index, counts, width=1.0, color="tab:blue")
        unused = index[counts == 0]
        axis.plot(unused, np.zeros(len(unused)), "|", color="tab:red", markersize=8)  # zero-height bars would not show
        axis.set_ylabel(label, fontsize=8)
        axis.set_yscale("symlog")
        axis.text(0.99, 0.9, f"{int((counts == 0).sum())} of {len(counts)} never", transform=axis.transAxes,
                  ha="right", va="top", fontsize=8, color="tab:red")
    if probe.name == "proto":  # class-owned: mark class boundaries
        for boundary in range(0, len(index), probe.prototypes_per_class):
            for axis in axes:
                axis.axvline(boundary - 0.5, color="0.8", linewidth=0.5)
    axes[1].set_xlabel("prototype index")
    figure.suptitle(f"{probe.name}: prototype usage", fontsize=10)
    save_figure(figure, path)


@torch.no_grad()
def _prototype_heatmaps(probe, data, index, logits, classes_per_clip, audio, path) -> None:
    batch = data.batch(torch.tensor([index]))
    length = int(data.lengths[index])
    sims = probe.similarities(batch["tokens"], batch["mask"])[0, :length]  # (T, F, M)
    descriptor = sims.amax(dim=(0, 1))  # (M,)
    labels = batch["labels"][0]
    positives = [int(c) for c in torch.nonzero(labels > 0).flatten()]
    classes = sorted(positives or [int(np.argmax(logits))], key=lambda c: -logits[c])[:classes_per_clip]
    names = data.meta.classes
    panels = []
    shares = probe.class_contributions(descriptor.expand(len(classes), -1), torch.tensor(classes))  # (K, M)
    for row, c in enumerate(classes):
        m = int(shares[row].argmax())
        panels.append((f"{names[c]}: prototype {m}\n(share {float(shares[row, m]):+.2f}, logit {logits[c]:+.2f})", sims[:, :, m].numpy()))
    _draw_panels(panels, audio, data, index, path, "cosine similarity")


# --- attentive probes ---------------------------------------------------------------------------


@torch.no_grad()
def _attention_report(probe, data, out, clips, audio) -> dict:
    probe.eval()
    figures = []
    for index in _pick_clips(data, clips):
        batch = data.batch(torch.tensor([index]))
        length = int(data.lengths[index])
        weights = probe.attention_map(batch["tokens"], batch["mask"])[0, :length].numpy()
        logits = probe(batch["tokens"], batch["mask"], batch["global"])[0]
        names = data.meta.classes
        true = [names[int(c)] for c in torch.nonzero(batch["labels"][0] > 0).flatten()]
        top = names[int(logits.argmax())]
        title = f"attention of {probe.name} (mean over heads/queries)\ntrue: {', '.join(true) or '-'}\ntop prediction: {top}"
        path = out / f"attention_{_safe(data.meta.clip_ids[index])}.png"
        _draw_panels([(title, weights)], audio, data, index, path, "attention weight")
        figures.append(path.name)
    return {"figures": figures}


# --- shared drawing -----------------------------------------------------------------------------


def _pick_clips(data: LoadedSplit, count: int) -> list[int]:
    """Clips with the most true classes first (ties: bank order), so multi-label heatmaps show several classes."""
    positives = data.labels.sum(dim=1).numpy()
    order = np.argsort(-positives, kind="stable")
    return [int(i) for i in order[:count]]


def _safe(clip_id: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in clip_id)


class _AudioSource:
    """Log-mel spectrograms of bank clips, from the manifest bank.json records (or one given)."""

    def __init__(self, bank: Bank, manifest: str | Path | None) -> None:
        self.dataset = None
        self.status = "no audio source recorded in bank.json; heatmaps drawn without spectrogram (pass --manifest)"
        source = {"manifest": str(manifest)} if manifest else (bank.info.get("source") or {})
        described = source.get("manifest") or source.get("folder") or source.get("dataset")
        try:
            self.dataset = reopen_dataset(source)
            if self.dataset is not None:
                self.status = f"from {described}"
        except PatchprobeError as exc:
            self.status = f"could not open {described} ({exc}); heatmaps drawn without spectrogram"

    def spectrogram(self, data: LoadedSplit, index: int) -> tuple[np.ndarray, float] | None:
        """(frames, mel) log-mel of a clip and the seconds it spans (the encoder's input window), or None."""
        if self.dataset is None:
            return None
        try:
            clip = self.dataset.load(data.meta.clip_ids[index], target_sr=data.meta.sample_rate)
        except (PatchprobeError, KeyError):
            return None
        limit = data.meta.encoder_config.get("clip_seconds")
        waveform = clip.waveform[: int(limit * clip.sample_rate)] if limit else clip.waveform
        config = FbankConfig(sample_rate=clip.sample_rate)
        if len(waveform) < config.window_size:
            return None
        return kaldi_fbank(torch.from_numpy(np.ascontiguousarray(waveform, dtype=np.float32)), config).numpy(), len(waveform) / clip.sample_rate


def _draw_panels(panels: list[tuple[str, np.ndarray]], audio: _AudioSource, data, index, path: Path, label: str) -> None:
    """One panel per (title, (T, F) map): the map stretched over the clip's log-mel spectrogram."""
    spectrogram = audio.spectrogram(data, index)
    figure, axes = new_figure(1, len(panels), figsize=(max(3.4 * len(panels) + 0.6, 5.6), 3.4), layout="constrained", squeeze=False)
    for axis, (title, grid) in zip(axes[0], panels):
        if spectrogram is not None:
            mel, seconds = spectrogram
            extent = (0.0, seconds, 0.0, float(mel.shape[1]))
            axis.imshow(mel.T, origin="lower", aspect="auto", extent=extent, cmap="gray")
            shown = axis.imshow(grid.T, origin="lower", aspect="auto", extent=extent, cmap="magma", alpha=0.55, interpolation="nearest")
            axis.set_xlabel("time (s)", fontsize=8)
            axis.set_ylabel("mel bin", fontsize=8)
        else:
            shown = axis.imshow(grid.T, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
            axis.set_xlabel("time token", fontsize=8)
            axis.set_ylabel("frequency token", fontsize=8)
        axis.set_title(title, fontsize=8)
        axis.tick_params(labelsize=7)
        figure.colorbar(shown, ax=axis, shrink=0.8).set_label(label, fontsize=7)
    figure.suptitle(f"clip {data.meta.clip_ids[index]}", fontsize=9)
    save_figure(figure, path)
