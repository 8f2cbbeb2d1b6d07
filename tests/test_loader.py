import pytest
import torch
import torch.nn.functional as F

from distillscope.data import ArrayDataset, Loader, apply_augmentation, draw_augmentation, load_data, normalize, split_rows
from distillscope.errors import DistillscopeError

MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _dataset(n=40, size=8, classes=4):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, size, size), generator=gen, dtype=torch.uint8)
    return ArrayDataset(images, torch.arange(n) % classes, [f"c{i}" for i in range(classes)])


def test_augmentation_matches_per_sample_crop_and_flip():
    data = _dataset(12)
    aug = draw_augmentation(12, torch.Generator().manual_seed(3), pad=2)
    out = apply_augmentation(data.images, aug, pad=2)
    assert aug["flip"].any() and not aug["flip"].all()
    for i in range(12):
        padded = F.pad(data.images[i], (2, 2, 2, 2))
        y, x = aug["dy"][i].item(), aug["dx"][i].item()
        ref = padded[:, y : y + 8, x : x + 8]
        ref = ref.flip(2) if aug["flip"][i] else ref
        assert torch.equal(out[i], ref)
    assert int(aug["dy"].max()) <= 4 and int(aug["dy"].min()) >= 0


def test_normalize_values_and_channels_last():
    x = torch.full((1, 3, 2, 2), 255, dtype=torch.uint8)
    out = normalize(x, MEAN, STD, channels_last=True)
    assert torch.allclose(out[0, :, 0, 0], torch.tensor([(1 - m) / s for m, s in zip(MEAN, STD)]))
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_train_batches_record_what_they_drew_and_replay_exactly():
    data = _dataset()
    loader = Loader(data, 16, MEAN, STD, train=True, seed=5, pad=2)
    seen = []
    for batch in loader.epoch(1):
        rows = batch.index  # index equals row number for a fresh dataset
        replay = normalize(apply_augmentation(data.images[rows], batch.aug, pad=2), MEAN, STD)
        assert torch.equal(replay, batch.images)
        assert torch.equal(batch.targets, data.targets[rows])
        seen.append(rows)
    assert sorted(torch.cat(seen).tolist()) == list(range(40))


def test_epoch_plans_are_reproducible_and_differ_between_epochs_and_seeds():
    loader = Loader(_dataset(), 16, MEAN, STD, train=True, seed=1)
    order0, aug0 = loader.plan(0)
    again, aug_again = loader.plan(0)
    assert torch.equal(order0, again) and all(torch.equal(aug0[k], aug_again[k]) for k in aug0)
    assert not torch.equal(order0, loader.plan(1)[0])
    assert not torch.equal(order0, Loader(_dataset(), 16, MEAN, STD, train=True, seed=2).plan(0)[0])


def test_resuming_mid_epoch_yields_the_remaining_batches():
    loader = Loader(_dataset(), 8, MEAN, STD, train=True, seed=0)
    full = list(loader.epoch(3))
    tail = list(loader.epoch(3, start_step=2))
    assert len(tail) == len(full) - 2
    for a, b in zip(full[2:], tail):
        assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index)


def test_eval_loader_is_ordered_and_unaugmented_and_drop_last_counts():
    data = _dataset(40)
    batches = list(Loader(data, 16, MEAN, STD).epoch(0))
    assert [len(b) for b in batches] == [16, 16, 8]
    assert torch.equal(torch.cat([b.index for b in batches]), torch.arange(40))
    assert batches[0].aug == {}
    assert len(Loader(data, 16, MEAN, STD, train=True, drop_last=True)) == 2


class _Streamed(torch.utils.data.Dataset):
    def __init__(self, data):
        self.data = data

    def __len__(self):
        return len(self.data)

    def __getitem__(self, i):
        return self.data.images[i], int(self.data.targets[i]), i


def test_streamed_dataset_gives_the_same_batches_as_in_memory():
    data = _dataset()
    a = list(Loader(data, 16, MEAN, STD, train=True, seed=4).epoch(2))
    b = list(Loader(_Streamed(data), 16, MEAN, STD, train=True, seed=4, num_workers=0).epoch(2))
    for x, y in zip(a, b):
        assert torch.equal(x.images, y.images) and torch.equal(x.targets, y.targets) and torch.equal(x.index, y.index)


def test_split_rows_is_stratified_disjoint_and_reproducible():
    targets = torch.arange(100) % 5
    train, val = split_rows(targets, 0.2, seed=7)
    assert len(val) == 20 and len(train) == 80
    assert set(train.tolist()).isdisjoint(val.tolist())
    assert torch.bincount(targets[val]).tolist() == [4] * 5
    assert torch.equal(val, split_rows(targets, 0.2, seed=7)[1])
    assert not torch.equal(val, split_rows(targets, 0.2, seed=8)[1])


def test_load_data_shapes_with_validation_keeps_original_indices():
    bundle = load_data("shapes?n=100&size=16&n_test=20", val_fraction=0.2)
    assert len(bundle.train) == 80 and len(bundle.val) == 20 and len(bundle.test) == 20
    assert set(bundle.train.index.tolist()) | set(bundle.val.index.tolist()) == set(range(100))
    assert bundle.num_classes == 10 and len(bundle.mean) == 3


@pytest.mark.parametrize(
    "spec, message",
    [
        ("imagenet:/x", "unknown dataset 'imagenet'"),
        ("shapes?n=abc", "n='abc' must be an integer"),
        ("shapes?colour=1", "unknown option(s) colour"),
        ("cifar10:/no/such/dir", "does not exist"),
        ("cifar10", "give a directory"),
    ],
)
def test_bad_specs_name_the_problem(spec, message):
    with pytest.raises(DistillscopeError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_data(spec)
