import json

import numpy as np
import pytest
import torch

from patchprobe.errors import PatchprobeError
from patchprobe.report import analyze_run, pairwise_cosines, prototype_usage
from patchprobe.bank import LoadedBank
from patchprobe.train import TrainConfig, fit, load_probe


def _train(bank, tmp_path, probe, **args):
    out = tmp_path / probe
    fit(bank, [TrainConfig(probe=probe, probe_args=args, epochs=2, batch_size=4, lr=0.01)], [out], progress=False)
    return out


def test_pairwise_cosines_of_known_vectors():
    vectors = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    np.testing.assert_allclose(sorted(pairwise_cosines(vectors)), [-1.0, 0.0, 0.0], atol=1e-7)


def test_prototype_usage_counts_every_valid_token_and_true_class(tiny_bank, tmp_path):
    run = _train(tiny_bank, tmp_path, "protobin", prototypes_per_class=2)
    probe = load_probe(run)
    test = LoadedBank.load(tiny_bank)["test"]
    usage = prototype_usage(probe, test, batch_size=3)
    assert usage["token_wins"].sum() == int(test.mask.sum())
    assert usage["class_wins"].sum() == int(test.labels.sum())
    assert usage["descriptor"].shape == (len(test), probe.num_prototypes)


@pytest.mark.parametrize("probe,args", [("protobin", {"prototypes_per_class": 2}), ("proto", {"prototypes_per_class": 2}), ("mhca", {})])
def test_analyze_writes_report_and_figures(tiny_bank, tmp_path, probe, args):
    run = _train(tiny_bank, tmp_path, probe, **args)
    compare = [_train(tiny_bank, tmp_path, "protofloat", prototypes_per_class=2)] if probe == "protobin" else None
    report = analyze_run(run, clips=2, compare=compare)
    folder = run / "analysis"
    saved = json.loads((folder / "analysis.json").read_text())
    assert saved["figures"] == report["figures"] and len(report["figures"]) >= 2
    for name in report["figures"]:
        assert (folder / name).stat().st_size > 10_000  # a real PNG, not an empty canvas
    assert report["spectrograms"].startswith("from ")  # found the audio through bank.json's source
    if probe == "protobin":
        names = list(report["cosine_similarity"])
        assert names[:2] == ["protobin: binary prototypes (used)", "protobin: real-valued latents"]
        assert len(names) == 3 and names[2].startswith("protofloat (")
        assert 0 <= report["dead_prototypes"]["count"] <= report["num_prototypes"] == 6


def test_analyze_refuses_fixed_pooling_heads(tiny_bank, tmp_path):
    run = _train(tiny_bank, tmp_path, "linear")
    with pytest.raises(PatchprobeError, match="fixed rule"):
        analyze_run(run)
