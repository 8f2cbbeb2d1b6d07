"""Multi-teacher KD (mtkd, aekd): checked against formulas written out here with plain loops."""
import copy
import itertools
import json
import math

import numpy as np
import pytest
import torch

from distillscope.config import load_config
from distillscope.data.loader import Batch
from distillscope.engine import Trainer
from distillscope.errors import DistillscopeError
from distillscope.methods import Outputs, create_method


def _batch(targets):
    return Batch(torch.zeros(len(targets), 3, 2, 2), torch.tensor(targets), torch.arange(len(targets)))


def _softmax(row, T):
    e = [math.exp(v / T) for v in row]
    return [x / sum(e) for x in e]


def _kl(p, q):
    """KL(p ‖ q) with 0 log 0 = 0."""
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def test_mtkd_with_identical_teachers_equals_single_teacher_kd():
    torch.manual_seed(0)
    s, t, batch = torch.randn(4, 5), torch.randn(4, 5), _batch([0, 1, 2, 3])
    for mask in (None, {"logits": 0.6}):
        extra = {"mask": mask} if mask else {}
        kd = create_method("kd", T=3.0, **extra)(Outputs(s), Outputs(t), batch, 0)
        mt = create_method("mtkd", T=3.0, **extra)(Outputs(s), [Outputs(t), Outputs(t.clone()), Outputs(t.clone())], batch, 0)
        assert torch.allclose(kd["kd"], mt["kd"], atol=1e-6) and torch.allclose(kd["ce"], mt["ce"])


def test_mtkd_averages_softened_distributions_of_each_masked_teacher():
    s = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.0, -2.0, 0.3]])
    t1 = torch.tensor([[3.0, 1.0, -1.0, 0.5], [0.2, 2.0, 1.0, -0.5]])
    t2 = torch.tensor([[-1.0, 2.5, 0.0, 1.0], [1.5, -1.0, 0.5, 2.0]])
    T, K = 2.0, 0.5  # mask keeps ceil(0.5 * 4) = 2 largest logits per teacher; the rest become 0 (logits_fill 0)
    loss = create_method("mtkd", T=T, kd_weight=1.0, ce_weight=0.0, mask={"logits": K})(Outputs(s), [Outputs(t1), Outputs(t2)],
                                                                                        _batch([0, 1]), 0)["kd"]
    expected = 0.0
    for i in range(2):
        masked = []
        for t in (t1, t2):
            row = t[i].tolist()
            top2 = sorted(row, reverse=True)[:2]
            masked.append([v if v >= top2[-1] else 0.0 for v in row])
        p_mean = [(a + b) / 2 for a, b in zip(_softmax(masked[0], T), _softmax(masked[1], T))]
        expected += _kl(p_mean, _softmax(s[i].tolist(), T)) * T * T / 2
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def _two_teacher_weight(g1, g2, cap):
    """argmin over a in [1 - cap, cap] of |a g1 + (1 - a) g2|²: the unconstrained minimiser, clipped."""
    diff = [x - y for x, y in zip(g1, g2)]
    a = -sum(d * y for d, y in zip(diff, g2)) / sum(d * d for d in diff)
    return min(max(a, 1 - cap), cap)


@pytest.mark.parametrize("cap", [1.0, 0.7])
def test_aekd_two_teacher_weights_match_the_closed_form(cap):
    T = 2.0
    s = torch.tensor([[0.3, -0.2, 1.0], [2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    t1 = torch.tensor([[2.0, 0.0, -1.0], [1.0, 1.0, 1.0], [3.0, -1.0, 0.0]])
    t2 = torch.tensor([[-1.0, 1.5, 0.5], [0.0, 2.0, -2.0], [2.0, 0.5, 0.0]])
    method = create_method("aekd", T=T, C=cap, kd_weight=1.0, ce_weight=0.0)
    alpha = method.teacher_weights(s, [t1, t2])
    for i in range(3):
        p_s = _softmax(s[i].tolist(), T)
        g1 = [T * (a - b) for a, b in zip(p_s, _softmax(t1[i].tolist(), T))]
        g2 = [T * (a - b) for a, b in zip(p_s, _softmax(t2[i].tolist(), T))]
        a = _two_teacher_weight(g1, g2, cap)
        assert alpha[i].tolist() == pytest.approx([a, 1 - a], abs=1e-4)
    # the loss is Σ_m α_m T² KL(p_m ‖ p_s), averaged over the batch
    loss = method(Outputs(s), [Outputs(t1), Outputs(t2)], _batch([0, 1, 2]), 0)["kd"]
    expected = sum(
        alpha[i, m].item() * T * T * _kl(_softmax(t[i].tolist(), T), _softmax(s[i].tolist(), T))
        for i in range(3) for m, t in enumerate((t1, t2))
    ) / 3
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_aekd_batch_weights_use_the_batch_mean_gradient():
    T, cap = 1.0, 0.8
    s = torch.tensor([[0.3, -0.2, 1.0], [2.0, 0.0, -1.0]])
    t1 = torch.tensor([[2.0, 0.0, -1.0], [1.0, 1.0, 1.0]])
    t2 = torch.tensor([[-1.0, 1.5, 0.5], [0.0, 2.0, -2.0]])
    alpha = create_method("aekd", T=T, C=cap, weights="batch").teacher_weights(s, [t1, t2])
    mean = [[0.0] * 3, [0.0] * 3]
    for i in range(2):
        p_s = _softmax(s[i].tolist(), T)
        for m, t in enumerate((t1, t2)):
            for c, (a, b) in enumerate(zip(p_s, _softmax(t[i].tolist(), T))):
                mean[m][c] += T * (a - b) / 2
    a = _two_teacher_weight(mean[0], mean[1], cap)
    assert alpha.flatten().tolist() == pytest.approx([a, 1 - a] * 2, abs=1e-4)
    with pytest.raises(DistillscopeError, match="choose sample or batch"):
        create_method("aekd", weights="each")


def test_aekd_three_teacher_weights_match_a_grid_search():
    torch.manual_seed(1)
    T, cap, step = 1.0, 0.5, 0.005
    s, teachers = torch.randn(2, 4), [torch.randn(2, 4) * 2 for _ in range(3)]
    alpha = create_method("aekd", T=T, C=cap).teacher_weights(s, teachers)
    n = round(1 / step)
    for i in range(2):
        p_s = _softmax(s[i].tolist(), T)
        g = [[T * (a - b) for a, b in zip(p_s, _softmax(t[i].tolist(), T))] for t in teachers]
        best, best_value = None, float("inf")
        for a, b in itertools.product(range(n + 1), repeat=2):
            w = (a * step, b * step, 1 - (a + b) * step)
            if min(w) < -1e-12 or max(w) > cap + 1e-12:
                continue
            value = sum(sum(w[m] * g[m][c] for m in range(3)) ** 2 for c in range(4))
            if value < best_value:
                best, best_value = w, value
        got = alpha[i].tolist()
        assert sum(got) == pytest.approx(1) and max(got) <= cap + 1e-6 and min(got) >= -1e-6
        found = sum(sum(got[m] * g[m][c] for m in range(3)) ** 2 for c in range(4))
        assert found <= best_value + 1e-6  # at least as good as the best grid point
        assert got == pytest.approx(list(best), abs=0.02)


def test_capped_simplex_projection_matches_a_generic_solver():
    from scipy.optimize import minimize

    from distillscope.methods.multi_teacher import project_capped_simplex

    torch.manual_seed(5)
    for m, cap in ((2, 0.5), (2, 0.8), (3, 0.6), (3, 1.0), (5, 0.2), (5, 0.35)):
        v = torch.randn(6, m, dtype=torch.float64) * 2
        got = project_capped_simplex(v, cap)
        for row, projected in zip(v.tolist(), got.tolist()):
            ref = minimize(lambda a: sum((x - y) ** 2 for x, y in zip(a, row)), [1 / m] * m, method="SLSQP", bounds=[(0, cap)] * m,
                           constraints=[{"type": "eq", "fun": lambda a: sum(a) - 1}], options={"ftol": 1e-14, "maxiter": 500})
            assert projected == pytest.approx(list(ref.x), abs=1e-5), (m, cap, row)

def test_config_rejects_mixed_or_mismatched_teachers():
    with pytest.raises(DistillscopeError, match="method 'kd' distils from one teacher"):
        load_config(None, ["method.name=kd", "teachers=[{name: resnet8, checkpoint: a}]"])
    with pytest.raises(DistillscopeError, match="either teacher"):
        load_config(None, ["method.name=mtkd", "teacher.name=resnet8", "teacher.checkpoint=a", "teachers=[{name: resnet8, checkpoint: a}]"])
    with pytest.raises(DistillscopeError, match="list them under teachers"):
        load_config(None, ["method.name=mtkd", "teacher.name=resnet8", "teacher.checkpoint=a"])
    with pytest.raises(DistillscopeError, match=r"teachers\[1\].checkpoint"):
        load_config(None, ["method.name=mtkd", "teachers=[{name: resnet8, checkpoint: a}, {name: resnet8}]"])


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    tiny = ["epochs=1", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32", "data.num_workers=0",
            "student.name=resnet8", "optim.schedule=cosine", "run.progress=false", "run.threads=1", "run.device=cpu", "run.precision=fp32"]
    return out, Trainer(load_config(None, tiny), out).fit()


def _comparable(row):
    return {k: v for k, v in row.items() if k != "img_per_s"}


def test_trainer_with_two_identical_teachers_matches_single_teacher_kd(tmp_path, tiny_overrides, teacher_dir):
    folder, teacher_summary = teacher_dir
    base = tiny_overrides + ["epochs=1", "run.precision=fp32", "run.teacher_cache=off"]
    single = Trainer(load_config(None, base + ["method.name=kd", "teacher.name=resnet8", f"teacher.checkpoint={folder}"]),
                     tmp_path / "kd").fit()
    teachers = f"teachers=[{{name: resnet8, checkpoint: '{folder}'}}, {{name: resnet8, checkpoint: '{folder}'}}]"
    multi = Trainer(load_config(None, base + ["method.name=mtkd", teachers]), tmp_path / "mtkd").fit()
    assert _comparable(multi["last"]) == pytest.approx(_comparable(single["last"]), rel=1e-5)
    assert multi["ensemble_test_top1"] == pytest.approx(teacher_summary["last"]["test/top1"])
    assert "ensemble_test_top1" not in single
    cached = Trainer(load_config(None, base + ["method.name=mtkd", teachers, f"run.teacher_cache={tmp_path / 'cache'}"]),
                     tmp_path / "cached")
    assert [c.folder for c in cached.teacher_caches] == [cached.teacher_caches[0].folder] * 2  # one per teacher, keyed by weights


def test_aekd_run_resumes_exactly(tmp_path, tiny_overrides, teacher_dir, interrupt_at):
    folder, _ = teacher_dir
    teachers = f"teachers=[{{name: resnet8, checkpoint: '{folder}'}}, {{name: resnet8, checkpoint: '{folder}'}}]"
    cfg = load_config(None, tiny_overrides + ["method.name=aekd", "method.mask={logits: 0.8}", teachers, "run.precision=fp32"])
    reference = Trainer(cfg, tmp_path / "full").fit()
    trainer = Trainer(cfg, tmp_path / "cut")
    interrupt_at(trainer, 5)
    resumed = Trainer(cfg, tmp_path / "cut", resume=True).fit()
    assert _comparable(resumed["last"]) == _comparable(reference["last"])
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["ensemble_test_top1"] == reference["ensemble_test_top1"]


# ----------------------------------------------------------------- AEKD-F (feature term)
def _aekd_f(shape_s, shape_t, teachers=2, **params):
    method = create_method("aekd_f", **{"kd_weight": 1.0, "ce_weight": 0.0, **params})
    method.build({"hint": torch.Size(shape_s)}, [{"hint": torch.Size(shape_t)}] * teachers, None)
    return method


def _feature_weights_by_hand(f, targets, cap):
    """Identity regressors: H_m = mean((f − t_m)²) over all N entries, so ∂H_m/∂f = 2 (f − t_m) / N per entry.
    Batch-mean those per-sample gradients, scale each to unit length, take the 2-vector min-norm weight on the
    capped simplex, map back (α_m ∝ β_m / ‖ḡ_m‖)."""
    f = f.detach().numpy()
    n, batch = f.size, f.shape[0]
    means = [((2 * (f - t.numpy()) / n).reshape(batch, -1)).mean(0) for t in targets]
    norms = [float(np.sqrt((g * g).sum())) for g in means]
    b = _two_teacher_weight((means[0] / norms[0]).tolist(), (means[1] / norms[1]).tolist(), cap)
    alpha = [b / norms[0], (1 - b) / norms[1]]
    return [a / sum(alpha) for a in alpha]


@pytest.mark.parametrize("cap", [1.0, 0.6])
def test_aekd_f_feature_weights_loss_and_gradient_match_a_hand_computation(cap):
    torch.manual_seed(2)
    f = torch.randn(3, 2, 2, 2, requires_grad=True)
    t1, t2 = torch.randn(3, 2, 2, 2).relu(), torch.randn(3, 2, 2, 2).relu() + 0.5
    method = _aekd_f(f.shape, t1.shape, C=cap, hint_weight=10.0)
    method.regressors = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    logits = torch.zeros(3, 4)
    hint = method(Outputs(logits, {"hint": f}), [Outputs(logits, {"hint": t1}), Outputs(logits, {"hint": t2})],
                  _batch([0, 1, 2]), 0)["hint"]

    alpha = _feature_weights_by_hand(f, [t1, t2], cap)
    assert method.last_feature_weights.tolist() == pytest.approx(alpha, abs=1e-4)
    fn, targets = f.detach().numpy(), [t1.numpy(), t2.numpy()]
    expected = 10.0 * sum(a * float(((fn - t) ** 2).mean()) for a, t in zip(alpha, targets))
    assert hint.item() == pytest.approx(expected, rel=1e-4)
    hint.backward()  # the weights are constants: ∂/∂f = 10 Σ_m α_m 2 (f − t_m) / N
    expected_grad = 10.0 * sum(a * 2 * (fn - t) / fn.size for a, t in zip(alpha, targets))
    assert np.allclose(f.grad.numpy(), expected_grad, rtol=1e-3, atol=1e-7)


def test_aekd_f_masks_each_teacher_map_before_weighting():
    torch.manual_seed(3)
    f = torch.randn(2, 2, 2, 2)
    t1, t2 = torch.randn(2, 2, 2, 2), torch.randn(2, 2, 2, 2)
    method = _aekd_f(f.shape, t1.shape, C=0.7, hint_weight=1.0, mask={"features": 0.5})
    method.regressors = torch.nn.ModuleList([torch.nn.Identity(), torch.nn.Identity()])
    logits = torch.zeros(2, 3)
    hint = method(Outputs(logits, {"hint": f}), [Outputs(logits, {"hint": t1}), Outputs(logits, {"hint": t2})], _batch([0, 1]), 0)["hint"]
    masked = []
    for t in (t1, t2):  # per sample keep the ceil(0.5 · 8) = 4 largest entries of each teacher's map, zero the rest
        rows = []
        for row in t.reshape(2, -1).tolist():
            fourth = sorted(row, reverse=True)[3]
            rows.append([v if v >= fourth else 0.0 for v in row])
        masked.append(torch.tensor(rows).reshape(t.shape))
    alpha = _feature_weights_by_hand(f, masked, 0.7)
    expected = sum(a * float(((f - t) ** 2).mean()) for a, t in zip(alpha, masked))
    assert hint.item() == pytest.approx(expected, rel=1e-4)


def test_aekd_f_with_identical_teachers_is_the_single_teacher_feature_loss():
    torch.manual_seed(4)
    f, t, s_logits, t_logits = torch.randn(4, 3, 4, 4), torch.randn(4, 5, 4, 4).relu(), torch.randn(4, 6), torch.randn(4, 6)
    method = _aekd_f(f.shape, t.shape, hint_weight=100.0, ce_weight=0.1, kd_weight=0.9)
    method.regressors[1].load_state_dict(method.regressors[0].state_dict())  # identical teachers, identical regressors
    batch = _batch([0, 1, 2, 3])
    got = method(Outputs(s_logits, {"hint": f}), [Outputs(t_logits, {"hint": t}), Outputs(t_logits.clone(), {"hint": t.clone()})], batch, 0)
    fitnet = create_method("fitnet", hint_weight=100.0)
    fitnet.regressor = copy.deepcopy(method.regressors[0])
    single = fitnet(Outputs(s_logits, {"hint": f}), Outputs(t_logits, {"hint": t}), batch, 0)
    kd = create_method("kd", T=4.0, kd_weight=0.9, ce_weight=0.1)(Outputs(s_logits), Outputs(t_logits), batch, 0)
    assert got["hint"].item() == pytest.approx(single["hint"].item(), rel=1e-5)
    assert got["kd"].item() == pytest.approx(kd["kd"].item(), rel=1e-5) and got["ce"].item() == pytest.approx(kd["ce"].item())
    assert sum(method.last_feature_weights.tolist()) == pytest.approx(1.0)


def test_aekd_f_regressors_follow_the_grids_and_refuse_what_they_cannot_map():
    method = _aekd_f((2, 3, 8, 8), (2, 5, 4, 4))
    assert method.regressors[0](torch.randn(2, 3, 8, 8)).shape == (2, 5, 4, 4)  # 3×3 stride 2
    method = _aekd_f((2, 3, 4, 4), (2, 5, 8, 8))
    assert method.regressors[0](torch.randn(2, 3, 4, 4)).shape == (2, 5, 8, 8)  # transposed
    method = _aekd_f((2, 3, 6, 6), (2, 5, 4, 4))
    assert method.regressors[0](torch.randn(2, 3, 6, 6)).shape == (2, 5, 4, 4)  # valid 3×3
    with pytest.raises(DistillscopeError, match="at least as large"):
        _aekd_f((2, 3, 3, 3), (2, 5, 4, 4))
    with pytest.raises(DistillscopeError, match="4-D maps"):
        _aekd_f((2, 3), (2, 5))


@pytest.mark.parametrize("cache", ["off", "auto"])  # live teachers; each teacher's logits and middle stage read from its cache
def test_aekd_f_run_sends_gradients_to_student_and_regressors_never_to_teachers(tmp_path, tiny_overrides, teacher_dir, cache):
    folder, _ = teacher_dir
    teachers = f"teachers=[{{name: resnet8, checkpoint: '{folder}'}}, {{name: resnet8, checkpoint: '{folder}'}}]"
    trainer = Trainer(load_config(None, tiny_overrides + ["method.name=aekd_f", teachers, "run.precision=fp32",
                                                          f"run.teacher_cache={cache}"]), tmp_path / "run")
    assert len(trainer.method.regressors) == 2 and len(trainer.teacher_caches) == {"off": 0, "auto": 2}[cache]
    batch = next(trainer.train_loader.epoch(0))
    trainer.student.train()
    trainer.method.train()
    _, losses = trainer._train_step(batch, 0)
    assert set(losses) == {"ce", "kd", "hint"}
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainer.student.parameters())
    for regressor in trainer.method.regressors:
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in regressor.parameters())
        assert any(p.grad.abs().sum() > 0 for p in regressor.parameters())
    optimised = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    for teacher in trainer.teachers:
        assert all(not p.requires_grad and p.grad is None and id(p) not in optimised for p in teacher.parameters())
