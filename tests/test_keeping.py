"""The settings that make CVM keep what it knew across updates: distillation from the previous model (lwf), the
weights merged with the previous model's (average_previous), an average of the weights over steps (ema), and a memory
balanced over classes and experiences."""

import pytest
import pytorch_lightning as pl
import torch
from test_model import quiet_trainer
from torch.utils.data import DataLoader, TensorDataset

from cvm_lightning.model import CVMModule
from cvm_lightning.model.losses import similarity_distillation
from cvm_lightning.model.replay import ReplayBuffer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def tiny(bank, **kwargs):
    kwargs.setdefault("buffer_size", 40)
    return CVMModule(bank, backbone="reduced_resnet18", in_chans=1, input_size=None, **kwargs)


def images(classes, per_class=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    y = torch.tensor(classes).repeat_interleave(per_class)
    x = torch.rand(len(y), 1, 8, 8, generator=generator) * 0.5 + y.view(-1, 1, 1, 1) / 20
    return x, y


def fit_experience(module, classes, experience, seed=0, epochs=2):
    x, y = images(classes, seed=seed)
    module.start_experience(classes, experience=experience)
    torch.manual_seed(seed)
    quiet_trainer(max_epochs=epochs).fit(module, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    return module


def trained_weights(module):
    return {name: p.detach().clone() for name, p in module.named_parameters() if p.requires_grad}


def test_distillation_is_zero_for_the_same_embeddings_and_grows_as_they_part():
    concepts = torch.nn.functional.normalize(torch.randn(4, 16), dim=-1)
    z = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    assert float(similarity_distillation(z, z, concepts, 0.05)) == pytest.approx(0.0, abs=1e-6)
    near = torch.nn.functional.normalize(z + 0.1 * torch.randn(6, 16), dim=-1)
    far = torch.nn.functional.normalize(torch.randn(6, 16), dim=-1)
    assert 0 < similarity_distillation(near, z, concepts, 0.05) < similarity_distillation(far, z, concepts, 0.05)


def test_lwf_adds_the_distillation_from_the_model_before_the_experience(digit_bank):
    """From the second experience, training_loss adds lwf x the distillation of the previous model's similarities over
    the classes it knew; without lwf no previous model is kept."""
    assert fit_experience(tiny(digit_bank), [0, 1], 0).previous is None
    module = fit_experience(tiny(digit_bank, lwf=2.0, distill=0.0), [0, 1], 0)
    assert module.previous is None, "the first experience has no previous model"
    module.start_experience([2], experience=1)
    assert module.previous is not None
    with torch.no_grad():  # the previous model and the current one part: distillation has something to say
        for p in module.head.parameters():
            p.add_(0.05 * torch.randn_like(p))
    module.train()
    x, y = images([2], seed=1)
    losses = {}
    for lwf in (2.0, 0.0):
        module.hparams["lwf"] = lwf
        torch.manual_seed(0)
        module.replay.generator.manual_seed(0)
        loss, z = module.training_loss(x, y, offer=False)
        losses[lwf] = float(loss)
    module.replay.generator.manual_seed(0)
    mixed_x, _, _ = module.mix_replay(x, y)
    known = module.previous.seen.nonzero().flatten()
    assert known.tolist() == [0, 1], "distillation covers the classes the previous model knew"
    expected = float(similarity_distillation(z, module.previous.embed(mixed_x), module.concepts[known],
                                             module.temperature))
    assert expected > 1e-3
    assert losses[2.0] - losses[0.0] == pytest.approx(2.0 * expected, rel=1e-3)


def test_average_previous_merges_the_weights_by_the_declared_amount(digit_bank):
    """With average_previous a, each trained weight after an update is a * before + (1 - a) * what training gave."""
    before = fit_experience(tiny(digit_bank), [0, 1], 0)
    state = before.state_dict()
    start = trained_weights(before)
    results = {}
    for weight in (0.0, 0.3):
        module = tiny(digit_bank, average_previous=weight)
        module.load_state_dict(state)
        module.replay.load_state_dict(before.replay.state_dict())
        module.experiences_trained = 1
        results[weight] = trained_weights(fit_experience(module, [2], 1, seed=1))
    for name, merged in results[0.3].items():
        expected = 0.3 * start[name] + 0.7 * results[0.0][name]
        torch.testing.assert_close(merged, expected, rtol=1e-5, atol=1e-6)
    moved = max(float((results[0.0][n] - start[n]).abs().max()) for n in start)
    assert moved > 1e-3, "training moved the weights, so the merge is not a no-op"


def test_the_previous_model_survives_a_checkpoint_saved_inside_an_experience(digit_bank, tmp_path):
    module = fit_experience(tiny(digit_bank, lwf=1.0), [0, 1], 0)
    module.start_experience([2], experience=1)
    with torch.no_grad():
        for p in module.head.parameters():
            p.add_(0.1)
    trainer = quiet_trainer()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "mid.ckpt")
    loaded = CVMModule.load_from_checkpoint(tmp_path / "mid.ckpt")
    assert loaded.previous is not None and loaded.experiences_trained == 1
    x, _ = images([0, 1])
    torch.testing.assert_close(loaded.previous.embed(x), module.previous.embed(x))
    assert not torch.allclose(loaded.previous.embed(x), loaded.encode(x)[1]), "the copy is the model before"


def test_a_memory_balanced_over_experiences_keeps_each_conditions_share():
    """class-experience: a class seen again under a new condition splits its share between the two; the class
    balance holds and the memory stays within its budget."""
    memory = ReplayBuffer(60, seed=0)
    memory.add(torch.zeros(120, 1), torch.tensor([0, 1, 2] * 40), group=0)  # the deployed model's images
    memory.add(torch.ones(30, 1), torch.tensor([0, 1, 2] * 10), group=1)  # an update: the same classes, new light
    memory.add(torch.full((5, 1), 2.0), torch.full((5,), 3), group=2)  # a new class
    assert len(memory) <= 60
    assert [memory.count(c) for c in range(4)] == [14, 14, 14, 5]  # 60 // 4 a class, halved between two groups
    for c in (0, 1, 2):
        assert memory.count(c, group=0) == memory.count(c, group=1) == 7
        assert set(memory.samples_of(c).flatten().tolist()) == {0.0, 1.0}
    restored = ReplayBuffer(0)
    restored.load_state_dict(memory.state_dict())
    assert [restored.count(c, g) for c in range(3) for g in (0, 1)] == [memory.count(c, g) for c in range(3)
                                                                        for g in (0, 1)]


def test_class_balance_alone_lets_an_update_take_a_small_part_of_its_classes_share():
    """The default: one reservoir per class, so the 15 images of an update take about 15 / 135 of it."""
    memory = ReplayBuffer(60, seed=0)
    memory.add(torch.zeros(120, 1), torch.tensor([0, 1, 2] * 40))
    memory.add(torch.ones(15, 1), torch.tensor([0, 1, 2] * 5))
    assert sum(int(memory.samples_of(c).sum()) for c in range(3)) < 15


def test_the_module_groups_its_memory_by_experience_with_class_experience(digit_bank):
    for balance, groups in (("class", [0]), ("class-experience", [0, 1])):
        module = fit_experience(tiny(digit_bank, replay_balance=balance), [0, 1], 0)
        fit_experience(module, [0, 1], 1, seed=1)
        assert module.replay.groups_of(0) == groups
        assert len(module.replay) <= 40


class RecordSteps(pl.Callback):
    """After each batch (the module holds the average then): the average and the raw weights."""

    def __init__(self):
        self.average, self.raw = [], []

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.average.append({k: v.detach().clone() for k, v in module.state_dict().items()
                             if k.startswith(("encoder.", "head."))})
        self.raw.append(module.weight_average.raw_state_dict())  # already a copy


def test_ema_averages_the_raw_weights_by_the_declared_decay(digit_bank):
    """With ema d, after step t the model holds d_t x its weights before + (1 - d_t) x the raw weights the optimiser
    gave, d_t = min(d, (t - 1) / t); every hook outside the step sees the average; the raw weights go on training."""
    x, y = images([0, 1])
    module = tiny(digit_bank, ema=0.6, recalibrate_bn=False)
    module.start_experience([0, 1], experience=0)
    record = RecordSteps()
    torch.manual_seed(0)
    trainer = pl.Trainer(max_epochs=3, accelerator="cpu", logger=False, enable_progress_bar=False,
                         enable_checkpointing=False, enable_model_summary=False, callbacks=[record])
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8, shuffle=True))
    assert module.weight_average.steps == len(record.average) == 6
    to_raw = {f"{'0' if k.startswith('encoder.') else '1'}.{k.split('.', 1)[1]}": k for k in record.average[0]}
    float_keys = [k for k in to_raw if record.raw[0][k].is_floating_point()]
    for t in range(len(record.average)):
        decay = min(0.6, t / (t + 1))  # t is 0-based here
        for key in float_keys:
            before = record.average[t - 1][to_raw[key]] if t else torch.zeros(())
            expected = decay * before + (1 - decay) * record.raw[t][key]
            torch.testing.assert_close(record.average[t][to_raw[key]], expected, rtol=1e-5, atol=1e-6, msg=key)
    apart = max(float((record.average[-1][to_raw[k]] - record.raw[-1][k]).abs().max()) for k in float_keys)
    assert apart > 1e-3, "the average lags the raw weights"
    walked = max(float((record.raw[-1][k] - record.raw[0][k]).abs().max()) for k in float_keys)
    assert walked > apart / 10, "the optimiser trains the raw weights, not the average"
    predicted = {k: v for k, v in module.state_dict().items() if k.startswith(("encoder.", "head."))}
    for key, value in record.average[-1].items():
        torch.testing.assert_close(predicted[key], value, rtol=0, atol=0)


def test_without_ema_no_average_is_kept(digit_bank):
    module = fit_experience(tiny(digit_bank), [0, 1], 0)
    assert module.weight_average is None


def test_the_raw_weights_and_the_step_count_survive_a_checkpoint(digit_bank, tmp_path):
    module = fit_experience(tiny(digit_bank, ema=0.9), [0, 1], 0)
    trainer = quiet_trainer()
    trainer.strategy.connect(module)
    trainer.save_checkpoint(tmp_path / "ema.ckpt")
    loaded = CVMModule.load_from_checkpoint(tmp_path / "ema.ckpt")
    x, _ = images([0, 1])
    module.eval(), loaded.eval()
    torch.testing.assert_close(loaded(x), module(x), msg="the checkpoint predicts with the average")
    assert loaded.weight_average.steps == module.weight_average.steps == 4
    for key, value in module.weight_average.raw_state_dict().items():
        torch.testing.assert_close(loaded.weight_average.raw_state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_ema_refuses_gradient_accumulation(digit_bank):
    from cvm_lightning.errors import ConfigError

    x, y = images([0, 1])
    module = tiny(digit_bank, ema=0.9)
    trainer = quiet_trainer(accumulate_grad_batches=2)
    with pytest.raises(ConfigError, match="accumulate_grad_batches"):
        trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=8))


def test_the_avalanche_strategy_trains_the_raw_weights_and_evaluates_the_average(digit_bank):
    from cvm_lightning.streams import StreamConfig, build_benchmark
    from cvm_lightning.training import CVMStrategy

    experience = build_benchmark("split-digits", StreamConfig(seed=0)).train_stream[0]
    module = CVMModule(digit_bank, backbone="mobilenetv3_small_050", in_chans=1, input_size=16, buffer_size=20,
                       ema=0.9)
    strategy = CVMStrategy(model=module, train_mb_size=32, train_epochs=1, evaluator=None)
    strategy.train(experience)
    assert module.weight_average.steps == -(-len(experience.dataset) // 32), "one update a minibatch"
    assert module.weight_average.holds_average
    raw = module.weight_average.raw_state_dict()
    average = {k: v for k, v in module.state_dict().items() if k.startswith("head.")}
    assert any(not torch.allclose(raw["1." + k.split(".", 1)[1]], v) for k, v in average.items())


class RecordUpdates:
    """An Avalanche plugin recording, after each update (the model holds the average then), the average and the raw
    weights; it runs after the strategy's own plugins, the weight average among them."""

    def __init__(self, averaging):
        self.averaging, self.average, self.raw = averaging, [], []

    def __getattr__(self, hook):  # Avalanche calls every hook on every plugin
        return lambda *args, **kwargs: None

    def after_update(self, strategy, *args, **kwargs):
        self.average.append({k: v.detach().clone() for k, v in strategy.model.state_dict().items()})
        self.raw.append(self.averaging().average.raw_state_dict())


def baseline_with_ema(name, decay, growing_head=False, epochs=1):
    from cvm_lightning.training.baselines import BaselineSettings, ClassifierNet, WeightAveragePlugin, build_baseline

    torch.manual_seed(0)
    net = ClassifierNet("reduced_resnet18", 10, in_chans=1, input_size=None, growing_head=growing_head)
    settings = BaselineSettings(buffer_size=20, batch_size=32, epochs=epochs, ema=decay)
    record = RecordUpdates(lambda: next(p for p in strategy.plugins if isinstance(p, WeightAveragePlugin)))
    strategy = build_baseline(name, net, torch.optim.SGD(net.parameters(), lr=0.1), settings, [record])
    return strategy, net, record


def test_a_baseline_evaluates_with_the_average_of_its_steps_by_the_declared_decay():
    """The baselines' --ema is CVM's: after step t the model holds d_t x the average before + (1 - d_t) x the raw
    weights, d_t = min(d, (t - 1) / t), and the optimiser trains the raw weights."""
    from cvm_lightning.streams import StreamConfig, build_benchmark

    experience = build_benchmark("split-digits", StreamConfig(seed=0)).train_stream[0]
    strategy, net, record = baseline_with_ema("replay", 0.6)
    strategy.train(experience)
    assert len(record.average) == -(-len(experience.dataset) // 32) >= 4, "one update a minibatch"
    keys = [k for k, v in record.average[0].items() if v.is_floating_point()]
    for t in range(len(record.average)):
        decay = min(0.6, t / (t + 1))
        for key in keys:
            before = record.average[t - 1][key] if t else torch.zeros(())
            expected = decay * before + (1 - decay) * record.raw[t]["0." + key]
            torch.testing.assert_close(record.average[t][key], expected, rtol=1e-5, atol=1e-6, msg=key)
    apart = max(float((record.average[-1][k] - record.raw[-1]["0." + k]).abs().max()) for k in keys)
    assert apart > 1e-3, "the model evaluates with the average, not the raw weights"


def test_a_growing_head_s_new_units_join_the_average():
    """ER-ACE's head grows by a unit a class at each experience: the average and the raw weights grow with it, the
    old units keep their values and the new ones start from the head's new units."""
    from cvm_lightning.streams import StreamConfig, build_benchmark

    stream = build_benchmark("split-digits", StreamConfig(seed=0)).train_stream
    strategy, net, record = baseline_with_ema("er_ace", 0.9, growing_head=True)
    strategy.train(stream[0])
    first = len(record.average)
    strategy.train(stream[1])
    weight = next(k for k in record.average[-1] if k.endswith("classifier.weight"))
    before, after = record.average[first - 1][weight], record.average[-1][weight]
    assert after.shape[0] > before.shape[0], "the head grew"
    assert record.raw[-1]["0." + weight].shape == after.shape
    # The first step of the second experience folds the raw weights into the average, old units included.
    grown, decay = before.shape[0], min(0.9, first / (first + 1))
    expected = decay * before + (1 - decay) * record.raw[first]["0." + weight][:grown]
    torch.testing.assert_close(record.average[first][weight][:grown], expected, rtol=1e-5, atol=1e-6)


def test_the_baselines_that_train_step_by_step_read_ema_and_key_their_results_on_it():
    from cvm_lightning.app.run_config import RunConfig

    config = RunConfig(ema=0.99)
    for name in ("naive", "replay", "der", "er_ace", "cumulative", "cvm"):
        assert config.settings_of(name)["ema"] == 0.99, name
    for name in ("gdumb", "icarl", "scr", "ncm"):
        assert "ema" not in config.settings_of(name), f"{name} does not train one model step by step"
