import pytest
import torch

from patchprobe.probes import PROBES, binarize, create_probe

PROBE_NAMES = ["linear", "mhca", "protobin"]


def batch(seed=0, b=4, t=5, f=3, d=16, g=16):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, t, f, d, generator=gen), torch.ones(b, t, f, dtype=torch.bool), torch.randn(b, g, generator=gen)


@pytest.mark.parametrize("name", PROBE_NAMES)
@pytest.mark.parametrize("use_global", [True, False])
def test_padding_never_changes_output(name, use_global):
    tokens, mask, global_vector = batch()
    torch.manual_seed(0)
    probe = create_probe(name, token_dim=16, num_classes=4, global_dim=16 if use_global else 0).eval()
    reference = probe(tokens, mask, global_vector if use_global else None)
    # Pad 3 time steps of garbage (huge values) and mark them invalid.
    padded = torch.cat([tokens, 1e3 * torch.randn(4, 3, 3, 16)], dim=1)
    padded_mask = torch.cat([mask, torch.zeros(4, 3, 3, dtype=torch.bool)], dim=1)
    out = probe(padded, padded_mask, global_vector if use_global else None)
    torch.testing.assert_close(out, reference, atol=1e-5, rtol=1e-5)
    assert out.shape == (4, 4)


def test_protobin_gradient_reaches_real_valued_prototypes():
    tokens, mask, _ = batch()
    probe = create_probe("protobin", token_dim=16, num_classes=4, prototypes_per_class=3)
    assert probe.prototypes.shape == (12, 16)
    probe(tokens, mask).sum().backward()
    assert probe.prototypes.grad is not None and probe.prototypes.grad.abs().sum() > 0


def test_protobin_forward_uses_only_signs():
    tokens, mask, _ = batch()
    probe = create_probe("protobin", token_dim=16, num_classes=4).eval()
    before = probe(tokens, mask)
    with torch.no_grad():
        probe.prototypes.mul_(torch.rand_like(probe.prototypes) * 5 + 0.1)  # same signs, new magnitudes
    torch.testing.assert_close(probe(tokens, mask), before)
    with torch.no_grad():
        probe.prototypes[0].neg_()
    assert not torch.allclose(probe(tokens, mask), before)


def test_binarize_sign_of_zero_is_plus_one_and_straight_through():
    w = torch.tensor([-0.3, 0.0, 0.2], requires_grad=True)
    out = binarize(w)
    assert out.tolist() == [-1.0, 1.0, 1.0]
    (out * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert w.grad.tolist() == [1.0, 2.0, 3.0]


def test_parameter_counts_follow_formulas():
    d, c, j = 16, 4, 20
    assert create_probe("linear", token_dim=d, num_classes=c, global_dim=d).num_parameters() == (d + 1) * c
    assert create_probe("protobin", token_dim=d, num_classes=c).num_parameters() == c * j * d + (c * j + 1) * c


def test_registry_error_lists_known_probes():
    with pytest.raises(KeyError, match="available: .*protobin"):
        create_probe("nope", token_dim=4, num_classes=2)
    assert set(PROBE_NAMES) <= set(PROBES.names())
