import json

import numpy as np
import pytest
import torch

from patchprobe.export import ExportError, example_inputs, export_onnx, export_run, load_packed
from patchprobe.probes import PROBES, create_probe
from patchprobe.bank import LoadedBank
from patchprobe.train import TrainConfig, fit, load_probe, predict


@pytest.fixture
def protobin_run(tiny_bank, tmp_path):
    config = TrainConfig(probe="protobin", probe_args={"prototypes_per_class": 3}, epochs=3, batch_size=4, lr=0.1)
    fit(tiny_bank, [config], [tmp_path / "run"], progress=False)
    return tmp_path / "run"


def test_packed_round_trip_gives_the_trained_logits_exactly(protobin_run, tiny_bank):
    result = export_run(protobin_run, "packed")
    trained = load_probe(protobin_run)
    packed = load_packed(result["path"])
    test = LoadedBank.load(tiny_bank)["test"]
    np.testing.assert_array_equal(predict(packed, test), predict(trained, test))
    assert packed.classes == json.loads((protobin_run / "config.json").read_text())["bank"]["classes"]
    # 9 prototypes x 32 dims: 4 bytes per prototype instead of 128.
    assert result["prototype_bytes"] == 9 * 4 and result["float32_prototype_bytes"] == 9 * 32 * 4
    assert torch.equal(packed.prototypes.abs(), torch.ones(9, 32))


def test_packed_export_refuses_float_prototypes(tiny_bank, tmp_path):
    fit(tiny_bank, [TrainConfig(probe="protofloat", probe_args={"prototypes_per_class": 2}, epochs=1, batch_size=4)],
        [tmp_path / "float"], progress=False)
    with pytest.raises(ExportError, match="binary prototypes"):
        export_run(tmp_path / "float", "packed")
    with pytest.raises(ExportError, match="unknown export format"):
        export_run(tmp_path / "float", "tflite")


def test_load_packed_rejects_other_files(protobin_run):
    with pytest.raises(ExportError, match="not a packed protobin file"):
        load_packed(protobin_run / "probe.safetensors")


@pytest.mark.parametrize("name", PROBES.names())
def test_onnx_logits_match_pytorch(name, tmp_path):
    torch.manual_seed(0)
    probe = create_probe(name, token_dim=32, num_classes=4, global_dim=24, freq_tokens=3)
    with torch.no_grad():  # non-trivial BatchNorm statistics, so eval-mode normalisation is exercised
        for module in probe.modules():
            if isinstance(module, torch.nn.BatchNorm1d):
                module.running_mean.normal_()
                module.running_var.uniform_(0.5, 2.0)
    result = export_onnx(probe, tmp_path / f"{name}.onnx")
    assert result["max_abs_diff"] < 1e-4
    # Independently of the built-in check: other batch and time sizes, with padding.
    import onnxruntime

    session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    inputs = example_inputs(probe, batch=5, time=11, seed=7)
    got = session.run(None, {k: v.numpy() for k, v in inputs.items()})[0]
    np.testing.assert_allclose(got, probe.eval()(**inputs).detach().numpy(), atol=1e-4)


def test_onnx_export_of_a_trained_run(protobin_run):
    result = export_run(protobin_run, "onnx")
    assert result["path"].endswith("probe.onnx") and result["max_abs_diff"] < 1e-4


# ---- the whole pipeline: waveform -> scores, and the metadata every ONNX file carries ----------------------------------


def _metadata(path) -> dict:
    import onnx

    return {prop.key: prop.value for prop in onnx.load(str(path)).metadata_props}


def test_fbank_convolution_matches_kaldi_fbank():
    from patchprobe.audio import FbankConfig, kaldi_fbank
    from patchprobe.export import FbankConvolution

    config = FbankConfig()
    wave = torch.randn(2, 16000 + 123, generator=torch.Generator().manual_seed(0)) * 0.1
    np.testing.assert_allclose(FbankConvolution(config)(wave).numpy(), kaldi_fbank(wave, config).numpy(), atol=2e-3)


def test_pipeline_onnx_of_a_run_matches_pytorch_at_several_lengths(protobin_run):
    """toy-vit (tiny-mae's architecture): one graph, dynamic length, checked on clips of three lengths."""
    result = export_run(protobin_run, "onnx", with_encoder=True, check_seconds=(0.7, 2.0, 3.3))
    assert result["dynamic_length"] and len(result["checked"]) == 3
    assert result["max_abs_diff"] < 1e-4, result["checked"]
    props = _metadata(result["path"])
    assert json.loads(props["patchprobe.classes"]) == json.loads((protobin_run / "config.json").read_text())["bank"]["classes"]
    assert props["patchprobe.encoder"] == "toy-vit" and json.loads(props["patchprobe.encoder_config"])["vit"]["width"] == 32
    assert props["patchprobe.sample_rate"] == "16000" and props["patchprobe.input_samples"] == "dynamic"
    # a length the check did not use, through onnxruntime directly
    import onnxruntime

    session = onnxruntime.InferenceSession(result["path"], providers=["CPUExecutionProvider"])
    scores = session.run(None, {"waveforms": np.random.default_rng(0).normal(0, 0.1, (1, 40_000)).astype(np.float32)})[0]
    assert scores.shape == (1, 3) and ((scores >= 0) & (scores <= 1)).all()


def test_pipeline_onnx_of_a_chunked_vit_has_a_fixed_input(tmp_path):
    """An EAT-style checkpoint ViT (fixed position table): one model input per graph, stated in the result."""
    from patchprobe.encoders.eat import EAT, EATConfig
    from patchprobe.encoders.fbank_vit import fbank_vit_encoder
    from patchprobe.export import export_pipeline
    from patchprobe.predict import Decisions

    torch.manual_seed(0)
    model = EAT(EATConfig(width=32, depth=1, heads=2, target_frames=128, position_table=64 * 8))
    with torch.no_grad():
        model.fixed_positional_encoder.positions.normal_(0, 0.02)
    encoder = fbank_vit_encoder(model, "eat-base", "random", "cls")
    probe = create_probe("protobin", token_dim=32, num_classes=4, global_dim=32, freq_tokens=8, prototypes_per_class=2)
    result = export_pipeline(encoder, probe, tmp_path / "eat.onnx", ["a", "b", "c", "d"],
                             Decisions(None, False, "argmax"))
    assert not result["dynamic_length"] and result["input_samples"] == 128 * 160
    assert "fixed input" in result["statement"] and result["max_abs_diff"] < 1e-4


def test_pipeline_refuses_other_encoders(protobin_run, tmp_path):
    from patchprobe.encoders import CheckpointEncoder
    from patchprobe.export import export_pipeline
    from patchprobe.predict import Decisions

    class Pooled(torch.nn.Module):
        config = None

    encoder = CheckpointEncoder(Pooled(), "beats", "x", "pooled", 32, 400)
    with pytest.raises(ExportError, match="fbank ViTs"):
        export_pipeline(encoder, create_probe("linear", 32, 3, 32), tmp_path / "x.onnx", ["a", "b", "c"], Decisions(None, False, "x"))
    with pytest.raises(ExportError, match="--format onnx"):
        export_run(protobin_run, "packed", with_encoder=True)


def test_probe_onnx_carries_classes_and_encoder_settings(protobin_run):
    result = export_run(protobin_run, "onnx")
    props = _metadata(result["path"])
    assert json.loads(props["patchprobe.classes"]) == ["high", "low", "mid"]
    assert props["patchprobe.probe"] == "protobin" and json.loads(props["patchprobe.encoder_config"])["seed"] == 0
    assert "tokens float32" in props["patchprobe.io"]
