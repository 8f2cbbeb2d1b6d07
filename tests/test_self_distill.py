"""Self-distillation methods (CD and its ablations, CS-KD, PS-KD, OLS) against hand computations."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import confusion_matrix

from distillscope.config import load_config
from distillscope.data import ArrayDataset, Batch, Loader, apply_augmentation, normalize
from distillscope.engine import Trainer
from distillscope.errors import DistillscopeError
from distillscope.methods import Outputs, TrainingInfo, create_method
from distillscope.methods.cd import ConfusionDistillation, confusion_ratio

REPO = Path(__file__).resolve().parents[1]
MEAN, STD = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)


def _info(targets, epochs=30, index=None):
    targets = torch.as_tensor(targets)
    index = torch.arange(len(targets)) if index is None else index
    return TrainingInfo(int(targets.max()) + 1, index, targets, epochs=epochs, steps_per_epoch=1)


def _softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _cd(targets=(0, 1, 2, 3), epochs=30, **params):
    method = create_method("cd", **params)
    method.build({}, {}, _info(list(targets), epochs))
    return method


# ----------------------------------------------------------------------------- CD: Q, S, EMA, phases
@pytest.mark.parametrize("k", [5, 100])
def test_hard_confusion_matches_sklearn_row_normalised_confusion_matrix(k):
    gen = torch.Generator().manual_seed(k)
    targets = torch.randint(0, k, (3000,), generator=gen)
    targets[targets == 3] = 2  # class 3 absent: its row stays zero
    logits = torch.randn(3000, k, generator=gen) + 2.5 * torch.nn.functional.one_hot(targets, k)
    q, counts = confusion_ratio(logits, targets, k)
    expected = confusion_matrix(targets.numpy(), logits.argmax(1).numpy(), labels=list(range(k))).astype(float)
    rows = expected.sum(1, keepdims=True)
    expected = np.divide(expected, rows, out=np.zeros_like(expected), where=rows > 0)
    np.testing.assert_allclose(q.numpy(), expected, atol=1e-12)
    assert counts[3] == 0 and not q[3].any()


def test_soft_confusion_is_the_class_mean_softmax():
    gen = torch.Generator().manual_seed(1)
    targets, logits = torch.tensor([0, 2, 2, 1, 0, 2]), torch.randn(6, 3, generator=gen) * 2
    p = _softmax(logits.double().numpy())
    expected = np.stack([p[targets.numpy() == c].mean(0) for c in range(3)])
    np.testing.assert_allclose(confusion_ratio(logits, targets, 3, soft=True)[0].numpy(), expected, atol=1e-12)


def test_prior_is_label_smoothing_and_phases_follow_the_ratio():
    method = _cd(smoothing=0.2)
    k, eps = 4, 0.2
    for i in range(k):
        for j in range(k):
            assert method.targets_table[i, j].item() == pytest.approx(1 - eps + eps / k if i == j else eps / k)
    assert method.ends == [3, 6, 12, 15, 30]  # 30/30/60/30/150 of 300 scaled to 30 epochs
    soft = [e for e in range(30) if method.is_soft(e)]
    assert soft == [3, 4, 5, 12, 13, 14]
    # Q̃ is updated after every epoch from the switch (epoch 3) on, while a soft epoch is still to come
    assert [e for e in range(30) if method.wants_predictions(e)] == list(range(3, 14))
    long = _cd(epochs=300)
    assert long.ends == [30, 60, 120, 150, 300] and long.is_soft(30) and not long.is_soft(29) and not long.is_soft(150)
    custom = _cd(epochs=10, phases=[1, 1])
    assert custom.ends == [5, 10] and [custom.is_soft(e) for e in (4, 5, 9)] == [False, True, True]


def test_ema_update_follows_eq6_and_keeps_rows_of_absent_classes():
    method = _cd(momentum=0.9, smoothing=0.1)
    s = np.full((4, 4), 0.1 / 4) + 0.9 * np.eye(4)
    # predictions: class 0 -> [0, 0, 1], class 1 -> [1, 1], class 2 -> [2, 3, 3, 3]; class 3 absent
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    predicted = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3, 3])
    logits = torch.nn.functional.one_hot(predicted, 4).float()
    q = np.zeros((4, 4))
    q[0, 0], q[0, 1], q[1, 1], q[2, 2], q[2, 3] = 2 / 3, 1 / 3, 1.0, 1 / 4, 3 / 4
    method.on_predictions(3, logits, targets, torch.arange(9))
    once = 0.9 * s + 0.1 * q
    once[3] = s[3]
    np.testing.assert_allclose(method.targets_table.numpy(), once, atol=1e-6)
    method.on_predictions(4, logits, targets, torch.arange(9))
    twice = 0.9 * once + 0.1 * q
    twice[3] = s[3]
    np.testing.assert_allclose(method.targets_table.numpy(), twice, atol=1e-6)
    np.testing.assert_allclose(method.targets_table.sum(1).numpy(), 1.0, atol=1e-6)


@pytest.mark.parametrize("soft", [False, True])
def test_train_steps_source_gathers_the_epochs_training_predictions(soft):
    method = _cd(confusion_source="train_steps", confusion="soft" if soft else "hard")
    assert method.prediction_split is None and not method.wants_predictions(3)
    gen = torch.Generator().manual_seed(4)
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    logits = torch.randn(9, 4, generator=gen) * 2
    method.train()
    for rows in (slice(0, 4), slice(4, 9)):  # two steps of epoch 3 (soft, Q̃ updated after it)
        method(Outputs(logits[rows]), None, Batch(torch.zeros(1), targets[rows], torch.arange(9)[rows]), 3)
    method.eval()
    method(Outputs(logits), None, Batch(torch.zeros(1), targets, torch.arange(9)), 3)  # evaluation: not gathered
    method.on_epoch_end(3)
    p = _softmax(logits.double().numpy()) if soft else np.eye(4)[logits.argmax(1).numpy()]
    q = np.zeros((4, 4))
    for c in range(3):
        q[c] = p[targets.numpy() == c].mean(0)
    s = np.full((4, 4), 0.1 / 4) + 0.9 * np.eye(4)
    expected = 0.9 * s + 0.1 * q
    expected[3] = s[3]
    np.testing.assert_allclose(method.targets_table.numpy(), expected, atol=1e-6)
    assert not method.step_counts.any()
    method.train()
    method(Outputs(logits), None, Batch(torch.zeros(1), targets, torch.arange(9)), 20)  # no soft epoch after 20
    assert not method.step_counts.any()


def _random_table(k=6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(k, k, generator=gen).softmax(1)


def test_diagonal_only_keeps_the_diagonal_and_spreads_the_rest_uniformly():
    table = _random_table()
    method = _cd(targets=range(6), structure="diagonal")
    method.targets_table.copy_(table)
    rows = method.target_rows(torch.arange(6))
    torch.testing.assert_close(rows.sum(1), torch.ones(6))
    for i in range(6):
        assert rows[i, i] == table[i, i]
        off = [rows[i, j].item() for j in range(6) if j != i]
        assert off == pytest.approx([(1 - table[i, i].item()) / 5] * 5)


def test_shuffled_keeps_each_rows_diagonal_and_off_diagonal_values_but_moves_them():
    torch.manual_seed(0)
    table = _random_table()
    method = _cd(targets=range(6), structure="shuffled")
    method.targets_table.copy_(table)
    rows = method.target_rows(torch.arange(6))
    torch.testing.assert_close(rows.sum(1), torch.ones(6))
    moved = 0
    for i in range(6):
        assert rows[i, i] == table[i, i]
        before = [table[i, j].item() for j in range(6) if j != i]
        after = [rows[i, j].item() for j in range(6) if j != i]
        assert sorted(after) == sorted(before)
        moved += after != before
    assert moved >= 4
    torch.testing.assert_close(method.target_rows(torch.tensor([2, 2])), rows[[2, 2]])  # the same permutation every step


def test_soft_phase_loss_is_alpha_t2_kl_plus_beta_ce_and_hard_phase_is_ce():
    method = _cd(T=2.0, cd_weight=0.7, ce_weight=0.3)
    table = _random_table(4, seed=3)
    method.targets_table.copy_(table)
    gen = torch.Generator().manual_seed(2)
    z, y = torch.randn(5, 4, generator=gen) * 3, torch.tensor([0, 1, 3, 3, 2])
    batch = Batch(torch.zeros(5, 3, 2, 2), y, torch.arange(5))
    zn, tn, yn = z.double().numpy(), table.double().numpy(), y.numpy()
    ce = -np.log(_softmax(zn)[np.arange(5), yn]).mean()
    q = _softmax(zn / 2.0)
    kl = np.mean([(tn[yn[b]] * (np.log(tn[yn[b]]) - np.log(q[b]))).sum() for b in range(5)])
    soft = method(Outputs(z), None, batch, epoch=3)
    assert soft["ce"].item() == pytest.approx(0.3 * ce, rel=1e-5)
    assert soft["cd"].item() == pytest.approx(0.7 * 4 * kl, rel=1e-5)
    hard = method(Outputs(z), None, batch, epoch=2)
    assert set(hard) == {"ce"} and hard["ce"].item() == pytest.approx(ce, rel=1e-5)


def test_cd_rejects_bad_options_in_one_line():
    with pytest.raises(DistillscopeError, match="confusion_source='tset' is not one of train, val, test"):
        create_method("cd", confusion_source="tset")
    with pytest.raises(DistillscopeError, match="structure='diag' is not one of full, diagonal, shuffled"):
        create_method("cd", structure="diag")
    with pytest.raises(DistillscopeError, match="phases=.*positive integers"):
        create_method("cd", phases=[3, 0])


# ----------------------------------------------------------------------------- PS-KD, OLS, CS-KD losses
def test_pskd_targets_mix_onehot_and_the_previous_prediction_by_index():
    method = create_method("pskd", alpha_T=0.8)
    method.build({}, {}, _info([1, 0, 2, 1], epochs=4, index=torch.tensor([0, 3, 5, 7])))
    method.train()
    gen = torch.Generator().manual_seed(0)
    z0, z1 = torch.randn(2, 3, generator=gen), torch.randn(2, 3, generator=gen)
    batch = Batch(torch.zeros(2, 3, 2, 2), torch.tensor([2, 1]), torch.tensor([5, 7]))
    onehot = np.eye(3)[[2, 1]]
    loss0 = method(Outputs(z0), None, batch, epoch=0)
    a0 = 0.8 * 1 / 4  # previous predictions start one-hot, so epoch 0 targets are one-hot whatever a_0 is
    expected0 = -(onehot * np.log(_softmax(z0.double().numpy()))).sum(1).mean()
    assert set(loss0) == {"pskd"} and loss0["pskd"].item() == pytest.approx(expected0, rel=1e-5) and method.alpha(0) == pytest.approx(a0)
    loss1 = method(Outputs(z1), None, batch, epoch=1)
    a1 = 0.8 * 2 / 4
    targets1 = (1 - a1) * onehot + a1 * _softmax(z0.double().numpy())
    expected1 = -(targets1 * np.log(_softmax(z1.double().numpy()))).sum(1).mean()
    assert loss1["pskd"].item() == pytest.approx(expected1, rel=1e-5)
    np.testing.assert_allclose(method.previous[[5, 7]].numpy(), _softmax(z1.double().numpy()), atol=1e-6)
    assert method.previous[3].tolist() == [1.0, 0.0, 0.0]  # untouched samples keep their state


def test_ols_gathers_correct_predictions_per_class_and_swaps_them_in_at_epoch_end():
    method = create_method("ols", smoothing=0.1)
    method.build({}, {}, _info([0, 1, 2], epochs=2))
    method.train()
    z = torch.tensor([[3.0, 1.0, 0.0], [2.0, 0.5, 0.1], [0.0, 2.0, 1.0], [0.5, 0.2, 0.1]])
    y = torch.tensor([0, 0, 1, 2])  # rows 0, 1, 2 correct; row 3 (class 2) wrong
    batch = Batch(torch.zeros(4, 3, 2, 2), y, torch.arange(4))
    p = _softmax(z.double().numpy())
    start = np.array([[0.9, 0.05, 0.05], [0.05, 0.9, 0.05], [0.05, 0.05, 0.9]])
    losses = method(Outputs(z), None, batch, epoch=0)
    ce = -np.log(p[np.arange(4), y.numpy()]).mean()
    soft = -(start[y.numpy()] * np.log(p)).sum(1).mean()
    assert losses["ce"].item() == pytest.approx(0.5 * ce, rel=1e-5) and losses["ols"].item() == pytest.approx(0.5 * soft, rel=1e-5)
    method.on_epoch_end(0)
    expected = np.stack([(p[0] + p[1]) / 2, p[2], np.full(3, 1 / 3)])
    np.testing.assert_allclose(method.soft_targets.numpy(), expected, atol=1e-6)
    assert not method.counts.any() and not method.sums.any()


def test_cskd_loss_is_lambda_t2_kl_to_the_partner_prediction():
    method = create_method("cskd", T=4.0, cls_weight=1.0)
    gen = torch.Generator().manual_seed(5)
    z, partner = torch.randn(3, 4, generator=gen) * 2, torch.randn(3, 4, generator=gen) * 2
    y = torch.tensor([0, 3, 1])
    losses = method(Outputs(z), Outputs(partner), Batch(torch.zeros(3, 3, 2, 2), y, torch.arange(3)), 0)
    p_t, p_s = _softmax(partner.double().numpy() / 4), _softmax(z.double().numpy() / 4)
    kl = (p_t * (np.log(p_t) - np.log(p_s))).sum(1).mean() * 16
    ce = -np.log(_softmax(z.double().numpy())[np.arange(3), y.numpy()]).mean()
    assert losses["cls"].item() == pytest.approx(kl, rel=1e-5) and losses["ce"].item() == pytest.approx(ce, rel=1e-5)


# ----------------------------------------------------------------------------- CS-KD pairs in the loader
def _dataset(n=48, classes=4):
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 6, 6), generator=gen, dtype=torch.uint8)
    targets = torch.randint(0, classes, (n,), generator=gen)
    return ArrayDataset(images, targets, [f"c{i}" for i in range(classes)], index=torch.arange(n) * 2 + 1)


def _paired_loader(data, seed=3):
    method = create_method("cskd")
    method.build({}, {}, TrainingInfo(4, data.index, data.targets, epochs=1, steps_per_epoch=1))
    return Loader(data, 8, MEAN, STD, train=True, seed=seed, pad=2, pair_rows=method.pair_rows)


def test_cskd_pairs_are_same_class_augmented_and_leave_the_anchors_unchanged():
    data = _dataset()
    plain = list(Loader(data, 8, MEAN, STD, train=True, seed=3, pad=2).epoch(2))
    paired = list(_paired_loader(data).epoch(2))
    partners = []
    for a, b in zip(plain, paired):
        assert torch.equal(a.images, b.images) and torch.equal(a.index, b.index)  # pairing draws after the anchors' plan
        pair = b.pair
        assert torch.equal(pair.targets, b.targets)
        rows = (pair.index - 1) // 2
        assert torch.equal(data.targets[rows], b.targets)
        assert torch.equal(normalize(apply_augmentation(data.images[rows], pair.aug, pad=2), MEAN, STD), pair.images)
        partners.append(rows)
    partners = torch.cat(partners)
    assert len(set(partners.tolist())) > len(partners) // 2  # random partners, not a fixed map
    for c in range(4):  # partners cover their class (uniform draw within the class)
        assert set(partners[data.targets[partners] == c].tolist()) <= set(torch.nonzero(data.targets == c).flatten().tolist())


def test_cskd_pairs_replay_exactly_from_any_step_and_differ_between_epochs():
    loader = _paired_loader(_dataset())
    full = list(loader.epoch(1))
    tail = list(loader.epoch(1, start_step=3))
    for a, b in zip(full[3:], tail):
        assert torch.equal(a.pair.index, b.pair.index) and torch.equal(a.pair.images, b.pair.images)
    other = torch.cat([b.pair.index for b in loader.epoch(2)])
    assert not torch.equal(torch.cat([b.pair.index for b in full]), other)


# ----------------------------------------------------------------------------- training through the Trainer
def _recipe(name, tiny, *extra):
    return load_config(REPO / "configs" / "cifar10_5k" / f"resnet20_{name}.yaml", [*tiny, *extra])


@pytest.mark.parametrize("name", ["ce", "cskd", "pskd", "ols", "cd", "cd_soft", "cd_diag", "cd_shuffled"])
def test_each_recipe_trains_a_few_steps(tmp_path, tiny_overrides, name):
    summary = Trainer(_recipe(name, tiny_overrides, "method.phases=[1, 1]" if name.startswith("cd") else "epochs=2"), tmp_path / name).fit()
    assert summary["epochs"] == 2 and summary["warnings"] == []
    terms = {k for k in summary["last"] if k.startswith("train/")}
    expected = {"ce": "train/ce", "cskd": "train/cls", "pskd": "train/pskd", "ols": "train/ols"}.get(name, "train/cd")
    assert expected in terms and np.isfinite(summary["last"]["train/loss"])


def test_cd_test_source_warns_and_is_recorded_in_the_summary_and_the_table(tmp_path, tiny_overrides):
    from distillscope.report import read_summaries, results_table

    cfg = _recipe("cd_test", tiny_overrides, "method.phases=[1, 1]")
    with pytest.warns(UserWarning, match="leaks test labels"):
        summary = Trainer(cfg, tmp_path / "leak").fit()
    assert any("confusion_source=test" in w for w in summary["warnings"])
    assert json.loads((tmp_path / "leak" / "summary.json").read_text())["warnings"] == summary["warnings"]
    assert "⚠ leaks test labels" in results_table(read_summaries([tmp_path / "leak"]))


def test_cd_val_source_without_a_validation_split_fails_in_one_line(tmp_path, tiny_overrides):
    cfg = _recipe("cd", tiny_overrides, "method.confusion_source=val", "data.val_fraction=0.0")
    with pytest.raises(DistillscopeError, match="predictions on 'val', which this run lacks.*data.val_fraction"):
        Trainer(cfg, tmp_path / "r")


@pytest.mark.parametrize("source", ["val", "train"])
def test_cd_receives_the_eval_mode_predictions_of_its_source(tmp_path, tiny_overrides, monkeypatch, source):
    cfg = _recipe("cd", tiny_overrides, "epochs=3", "method.phases=[1, 2]", f"method.confusion_source={source}", "run.precision=fp32")
    trainer = Trainer(cfg, tmp_path / source)
    calls = []
    original = ConfusionDistillation.on_predictions

    def spy(self, epoch, logits, targets, index):
        dataset = trainer.data.val if source == "val" else trainer.data.train
        with torch.no_grad():  # an independent eval-mode, un-augmented pass over the whole split
            trainer.student.eval()
            expected = trainer.student(normalize(dataset.images, trainer.data.mean, trainer.data.std)).float()
            trainer.student.train()
        calls.append(epoch)
        assert torch.equal(index, dataset.index) and torch.equal(targets, dataset.targets)
        torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
        original(self, epoch, logits, targets, index)

    monkeypatch.setattr(ConfusionDistillation, "on_predictions", spy)
    trainer.fit()
    assert calls == [1]  # phases end at epochs 1 and 3: soft epochs 1-2; Q̃ is needed only after epoch 1
    assert not torch.allclose(trainer.method.targets_table, torch.full((10, 10), 0.01) + 0.9 * torch.eye(10))


# ----------------------------------------------------------------------------- exact --resume with method state
def _comparable(rows):
    return [{k: v for k, v in row.items() if k != "img_per_s"} for row in rows]


@pytest.mark.parametrize("name", ["pskd", "ols", "cskd", "cd", "cd_steps"])
def test_method_state_survives_resume_exactly(tmp_path, tiny_overrides, interrupt_at, name):
    cd = ["method.phases=[1, 3]", f"method.confusion_source={'train_steps' if name == 'cd_steps' else 'train'}"]
    cfg = _recipe(name[:2] if name.startswith("cd") else name, tiny_overrides, "epochs=4", *(cd if name.startswith("cd") else []))
    reference = Trainer(cfg, tmp_path / "full")
    reference.fit()

    trainer = Trainer(cfg, tmp_path / "cut")
    interrupt_at(trainer, 10)  # mid epoch 3 of 4 (4 steps per epoch), after the state has evolved
    resumed = Trainer(cfg, tmp_path / "cut", resume=True)
    resumed.fit()
    assert _comparable(resumed.history) == _comparable(reference.history)
    for key, value in reference.method.state_dict().items():
        assert torch.equal(resumed.method.state_dict()[key], value), key
    assert bool(reference.method.state_dict()) == (name != "cskd")  # CS-KD's state is the epoch plan itself
    for a, b in zip(reference.student.state_dict().values(), resumed.student.state_dict().values()):
        assert torch.equal(a, b)


def test_cost_benchmark_smoke(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("self_distill_cost", REPO / "bench" / "self_distill_cost.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    out = tmp_path / "benchmarks.md"
    out.write_text("# Benchmarks\n")
    args = ["--quick", "--threads", "1", "--data", "shapes?n=160&size=16&n_test=32", "--set", "student.name=resnet8",
            "--set", "data.val_fraction=0.2", "--out", str(out)]
    text = bench.main(args)
    rows = {line.split("|")[1].strip(): line.split("|")[2:-1] for line in text.splitlines()
            if line.startswith("| ") and "---" not in line and "method" not in line}
    assert list(rows) == list(bench.CASES)
    assert all(float(x) >= 0 for r in rows.values() for x in r)
    assert (float(rows["ce"][-1]) == 1.0 and float(rows["cd, Q from train"][2]) > 0
            and float(rows["cd, Q from val"][2]) < float(rows["cd, Q from train"][2]))
    assert out.read_text().startswith("# Benchmarks\n") and bench.START in out.read_text()
