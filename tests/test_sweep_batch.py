"""Trials trained in passes (`trials_per_pass`): a pass gives each trial the value it gets trained alone, the pruner
stops one trial of a pass while the others complete, and the budget, heartbeats and saved settings hold as before."""

import optuna
import pytest
from optuna.trial import TrialState

from patchprobe.bank import LoadedBank
from patchprobe.sweep import SweepConfig
from patchprobe.sweep.search import _open_study, optuna_quietly, search

from .test_sweep import bank  # noqa: F401 - `bank` is a fixture


@pytest.fixture(scope="module")
def loaded(bank):  # noqa: F811 - the fixture above
    return LoadedBank.load(bank)


def _study(tmp_path, config: SweepConfig, name: str):
    with optuna_quietly():
        return _open_study(config, f"sqlite:///{tmp_path / (name + '.db')}", name)


def _one_pass(trials) -> bool:
    """True when every trial started before any finished: they were trained together."""
    return max(t.datetime_start for t in trials) < min(t.datetime_complete for t in trials)


@pytest.mark.parametrize("probe", ["linear", "protobin"])
def test_passes_give_each_trial_the_reports_decisions_and_value_it_gets_alone(tmp_path, loaded, probe):
    # every trial a Sobol point (its setting depends on its number only), the paper's pruner: both studies try the same
    # settings, and the pruner must decide the same for each trial whether trials run one at a time or in a pass
    base = SweepConfig(probe=probe, trials=4, startup_trials=4, epochs=3, batch_size=16, heartbeat_seconds=1, grace_seconds=3)
    results = {}
    for per_pass in (1, 4):
        study, config = _study(tmp_path, base.model_copy(update={"trials_per_pass": per_pass}), f"k{per_pass}")
        assert search(study, config, loaded) == 4
        results[per_pass] = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    alone, together = results[1], results[4]
    # min_resource "auto" prunes nothing before a trial completes: the first pass is trial 0 alone, then 1-3 together
    assert together[0].datetime_complete < together[1].datetime_start and _one_pass(together[1:]) and not _one_pass(alone[1:])
    assert [t.params for t in together] == [t.params for t in alone]
    assert [t.state for t in together] == [t.state for t in alone]
    for a, b in zip(alone, together):
        assert b.intermediate_values == pytest.approx(a.intermediate_values, abs=1e-4)
        assert (b.value is None) == (a.value is None) and (b.value is None or b.value == pytest.approx(a.value, abs=1e-4))
        assert b.user_attrs["valid_loss"] == pytest.approx(a.user_attrs["valid_loss"], rel=1e-4)
        assert b.user_attrs.get("num_parameters") == a.user_attrs.get("num_parameters")
        assert set(b.user_attrs) == set(a.user_attrs) and b.user_attrs["seconds"] > 0
    assert len({t.intermediate_values[1] for t in together}) == 4  # the settings differ, and so do the scores


def test_prune_off_trains_the_first_pass_together_with_the_values_of_trials_alone(tmp_path, loaded):
    base = SweepConfig(probe="linear", trials=3, startup_trials=3, epochs=2, batch_size=16, prune=False, heartbeat_seconds=1, grace_seconds=3)
    results = {}
    for per_pass in (1, 3):
        study, config = _study(tmp_path, base.model_copy(update={"trials_per_pass": per_pass}), f"k{per_pass}")
        assert search(study, config, loaded) == 3
        results[per_pass] = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    assert _one_pass(results[3]) and not _one_pass(results[1])
    assert [t.value for t in results[3]] == pytest.approx([t.value for t in results[1]], abs=1e-4)


def test_the_pruner_stops_one_trial_of_a_pass_and_the_others_complete(tmp_path, loaded):
    # explicit min_resource 1: rung 0 at epoch 1 is decided for every trial, the first included (the "auto" default
    # waits for a completed trial); epochs 3 with a report every epoch: only epoch 1 is a rung
    base = SweepConfig(probe="linear", trials=3, startup_trials=3, epochs=3, batch_size=8, lr_range=(1e-6, 1.0), prune_min_resource=1,
                       report_every=1, heartbeat_seconds=1, grace_seconds=3)
    settings = [{"lr": 1e-6, "weight_decay": 1e-5},  # barely moves; promoted, being the first at its rung
                {"lr": 0.1, "weight_decay": 1e-5},  # learns: beats trial 0 at epoch 1
                {"lr": 1.1e-6, "weight_decay": 1e-5}]  # barely moves: below trial 1 at epoch 1, pruned there
    results = {}
    for per_pass in (1, 3):
        study, config = _study(tmp_path, base.model_copy(update={"trials_per_pass": per_pass}), f"k{per_pass}")
        for setting in settings:
            study.enqueue_trial(setting)
        assert search(study, config, loaded) == 3
        results[per_pass] = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    alone, together = results[1], results[3]
    assert max(t.datetime_start for t in together) < together[0].datetime_complete  # one pass
    assert [t.state for t in together] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED]
    pruned = together[2]
    assert pruned.user_attrs["pruned_at_epoch"] == 1 and list(pruned.intermediate_values) == [1]  # no report after its stop
    assert pruned.intermediate_values[1] < together[1].intermediate_values[1]
    assert {"seconds", "valid_loss"} <= set(pruned.user_attrs) and "num_parameters" not in pruned.user_attrs
    assert pruned.datetime_complete < together[0].datetime_complete  # told when pruned, not at the end of the pass
    assert [list(t.intermediate_values) for t in together[:2]] == [[1, 2], [1, 2]]
    # one at a time, the pruner decides the same; every trial gets the same reports and the same result
    assert [t.state for t in alone] == [t.state for t in together]
    for a, b in zip(alone, together):
        assert b.intermediate_values == pytest.approx(a.intermediate_values, abs=1e-4)
        assert (b.value is None) == (a.value is None) and (b.value is None or b.value == pytest.approx(a.value, abs=1e-4))


def test_a_pass_never_exceeds_the_budget_nor_mixes_sobol_and_tpe_trials_and_extends_a_study(tmp_path, loaded):
    config = SweepConfig(probe="linear", trials=3, epochs=1, prune=False, trials_per_pass=8, heartbeat_seconds=1, grace_seconds=3)
    study, config = _study(tmp_path, config, "budget")
    assert search(study, config, loaded) == 3
    assert len(study.trials) == 3 and all(t.state == TrialState.COMPLETE for t in study.trials)  # asked only 3
    # one Sobol trial (startup: 3 // 2): the TPE trials wait for its result, then run together
    first, *tpe = study.trials
    assert first.datetime_complete < min(t.datetime_start for t in tpe) and _one_pass(tpe)
    # a worker with another pass size joins (how a worker runs is not a setting of the study) and extends it
    wider, wider_config = _study(tmp_path, config.model_copy(update={"trials": 5, "trials_per_pass": 2}), "budget")
    assert search(wider, wider_config, loaded) == 2
    assert [t.state for t in wider.trials] == [TrialState.COMPLETE] * 5
    assert len({(t.params["lr"], t.params["weight_decay"]) for t in wider.trials}) == 5


def test_a_pass_of_trials_that_fails_leaves_no_trial_running(tmp_path, loaded):
    """Training that raises (here: a probe argument the probe refuses) fails every trial of the pass at once, so
    none holds a place in the budget until the grace period ends."""
    config = SweepConfig(probe="linear", probe_args={"no_such_argument": 1}, trials=3, startup_trials=3, epochs=1, prune=False,
                         trials_per_pass=3, heartbeat_seconds=1, grace_seconds=3)
    study, config = _study(tmp_path, config, "fails")
    with pytest.raises(ValueError, match="no_such_argument"):
        search(study, config, loaded)
    assert [t.state for t in study.get_trials(deepcopy=False)] == [TrialState.FAIL] * 3
    assert optuna.storages.fail_stale_trials(study) is None  # nothing left to reclaim
