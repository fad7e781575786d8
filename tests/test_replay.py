import torch

from cvm_lightning.model import ReplayBuffer


def offer(buffer, classes, per_class, start=0):
    for c in classes:
        values = torch.arange(start, start + per_class, dtype=torch.float32)
        buffer.add(values[:, None], torch.full((per_class,), c))


def test_capacity_is_split_evenly_over_classes():
    buffer = ReplayBuffer(capacity=30, seed=0)
    offer(buffer, [0, 1], 100)
    assert len(buffer) == 30
    offer(buffer, [2], 100)
    counts = {c: len(buffer.samples_of(c)) for c in buffer.classes}
    assert counts == {0: 10, 1: 10, 2: 10}


def test_reservoir_keeps_a_uniform_sample_of_each_class():
    buffer = ReplayBuffer(capacity=200, seed=1)
    for start in range(0, 10_000, 100):  # 100 batches of one class
        buffer.add(torch.arange(start, start + 100, dtype=torch.float32)[:, None], torch.zeros(100, dtype=torch.long))
    kept = buffer.samples_of(0).flatten()
    assert len(kept) == 200
    assert 3_500 < kept.mean() < 6_500, "a reservoir keeps early and late samples alike"


def test_sampling_skips_current_classes_and_empty_buffers():
    buffer = ReplayBuffer(capacity=20, seed=0)
    assert buffer.sample(4) is None
    offer(buffer, [0, 1], 10)
    x, y = buffer.sample(8, exclude={1})
    assert len(x) == 8 and set(y.tolist()) == {0}
    assert buffer.sample(8, exclude={0, 1}) is None


def test_zero_capacity_stores_nothing():
    buffer = ReplayBuffer(capacity=0)
    offer(buffer, [0], 10)
    assert len(buffer) == 0 and buffer.sample(4) is None


def test_state_dict_round_trip_continues_identically():
    a = ReplayBuffer(capacity=12, seed=3)
    offer(a, [0, 1, 2], 10)
    b = ReplayBuffer(capacity=1, seed=99)
    b.load_state_dict(a.state_dict())
    xa, ya = a.sample(5)
    xb, yb = b.sample(5)
    assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_extras_travel_with_their_samples_through_shrinking_and_checkpoints():
    buffer = ReplayBuffer(capacity=10, seed=0)
    x = torch.arange(20, dtype=torch.float32)[:, None]
    buffer.add(x, torch.zeros(20, dtype=torch.long), x * 10)  # extra = 10 * sample
    buffer.add(x + 100, torch.ones(20, dtype=torch.long), (x + 100) * 10)
    restored = ReplayBuffer(capacity=1)
    restored.load_state_dict(buffer.state_dict())
    xs, ys, extras = restored.sample(50)
    assert torch.equal(extras, xs * 10)
    assert set(ys.tolist()) == {0, 1}


def test_memory_larger_than_the_data_keeps_everything():
    buffer = ReplayBuffer(capacity=10_000, seed=0)
    x, y = torch.randn(50, 3), torch.arange(50) % 5
    buffer.add(x, y)
    assert len(buffer) == 50 and buffer.classes == [0, 1, 2, 3, 4]
    replayed_x, replayed_y = buffer.sample(64)
    assert len(replayed_y) == 50 and set(replayed_y.tolist()) == {0, 1, 2, 3, 4}
