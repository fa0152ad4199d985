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
