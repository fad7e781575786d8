"""The settings that make CVM keep what it knew across updates: distillation from the previous model (lwf), the
weights merged with the previous model's (average_previous), and a memory balanced over classes and experiences."""

import pytest
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
