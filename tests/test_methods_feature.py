"""Feature- and relation-based methods: each loss against loops written out here, gradients, recipes, resume."""
import json
import math
from pathlib import Path

import pytest
import torch
from scipy.stats import truncnorm
from torch import nn
from torch.nn import functional as F

from distillscope import cli
from distillscope.config import load_config
from distillscope.data import Batch, Loader, load_data
from distillscope.engine import Trainer, evaluate, load_checkpoint, load_model
from distillscope.errors import DistillscopeError
from distillscope.methods import Outputs, TrainingInfo, create_method
from distillscope.models import FeatureTaps, create_model

REPO = Path(__file__).resolve().parents[1]

FEATURE_METHODS = ["at", "sp", "cc", "vid", "rkd", "pkt", "crd", "simkd", "reviewkd", "ofd"]
TINY = [  # tests/conftest.py's tiny_overrides, needed here by a module-scoped fixture
    "epochs=2", "data.spec=shapes?n=160&size=16&n_test=40", "data.val_fraction=0.2", "data.batch_size=32",
    "data.num_workers=0", "student.name=resnet8", "optim.lr=0.05", "optim.schedule=cosine",
    "run.progress=false", "run.threads=1", "run.device=cpu",
]


# ----------------------------------------------------------------------------- independent references
def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).float()


def block_mean(x, out_h, out_w):
    """Adaptive average pooling written out: cell (i, j) averages rows ⌊iH/h⌋..⌈(i+1)H/h⌉ and likewise columns."""
    n, c, h, w = x.shape
    out = torch.zeros(n, c, out_h, out_w)
    for i in range(out_h):
        for j in range(out_w):
            r0, r1 = (i * h) // out_h, -((-(i + 1) * h) // out_h)
            c0, c1 = (j * w) // out_w, -((-(j + 1) * w) // out_w)
            out[:, :, i, j] = x[:, :, r0:r1, c0:c1].mean(dim=(2, 3))
    return out


def to_common_grid(s, t):
    h, w = min(s.shape[2], t.shape[2]), min(s.shape[3], t.shape[3])
    return (s if s.shape[2:] == (h, w) else block_mean(s, h, w)), (t if t.shape[2:] == (h, w) else block_mean(t, h, w))


def huber(x):
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def unit(v):
    n = math.sqrt(sum(float(a) ** 2 for a in v))
    return [float(a) / n for a in v] if n > 0 else [0.0] * len(v)


def dot(a, b):
    return sum(float(x) * float(y) for x, y in zip(a, b))


def info_for(n=8, classes=4, index=None):
    index = torch.arange(n) if index is None else index
    return TrainingInfo(classes, index, torch.arange(len(index)) % classes, epochs=1, steps_per_epoch=1)


def run(method, s_feats, t_feats, epoch=0, taps=(None, None)):
    """Build ``method`` from the features' shapes and return its distillation terms for one batch."""
    n = next(iter(s_feats.values())).shape[0]
    method.taps(*taps)
    method.build({k: v.shape for k, v in s_feats.items()}, {k: v.shape for k, v in t_feats.items()}, info_for(max(n, 8)))
    batch = Batch(torch.zeros(n, 3, 8, 8), torch.arange(n) % 4, torch.arange(n))
    losses = method(Outputs(torch.zeros(n, 4), s_feats), Outputs(torch.zeros(n, 4), t_feats), batch, epoch)
    return {k: v for k, v in losses.items() if k != "ce"}


# ----------------------------------------------------------------------------- losses vs loops
@pytest.mark.parametrize("p", [2.0, 3.0])
def test_at_matches_normalised_attention_maps_written_out(p):
    pairs = [(randn(2, 3, 4, 4, seed=1), randn(2, 5, 2, 2, seed=2)), (randn(2, 4, 2, 2, seed=3), randn(2, 6, 4, 4, seed=4))]
    expected = 0.0
    for s, t in pairs:
        s, t = to_common_grid(s, t)
        diffs = []
        for b in range(2):
            maps = []
            for x in (s[b], t[b]):
                a = [sum(abs(float(x[c, i, j])) ** p for c in range(x.shape[0])) for i in range(x.shape[1]) for j in range(x.shape[2])]
                maps.append(unit(a))
            diffs += [(u - v) ** 2 for u, v in zip(*maps)]
        expected += sum(diffs) / len(diffs)
    method = create_method("at", p=p, at_weight=7.0, student_taps=["x", "y"], teacher_taps=["x", "y"])
    losses = run(method, {"f0": pairs[0][0], "f1": pairs[1][0]}, {"f0": pairs[0][1], "f1": pairs[1][1]})
    assert losses["at"].item() == pytest.approx(7.0 * expected, rel=1e-5)


def test_sp_matches_row_normalised_batch_similarities():
    s, t = randn(3, 2, 2, 2, seed=5), randn(3, 5, 1, 1, seed=6)
    grams = []
    for x in (s.flatten(1), t.flatten(1)):
        grams.append([unit([dot(x[i], x[j]) for j in range(3)]) for i in range(3)])
    expected = sum((grams[1][i][j] - grams[0][i][j]) ** 2 for i in range(3) for j in range(3)) / 9
    losses = run(create_method("sp", sp_weight=3.0), {"f0": s}, {"f0": t})
    assert losses["sp"].item() == pytest.approx(3.0 * expected, rel=1e-5)


def test_pkt_matches_cosine_kernel_probabilities():
    s, t = randn(4, 6, seed=7), randn(4, 3, seed=8)

    def probabilities(x):
        k = [[(dot(unit(x[i]), unit(x[j])) + 1) / 2 for j in range(4)] for i in range(4)]
        return [[k[i][j] / sum(k[i]) for j in range(4)] for i in range(4)]

    p_s, p_t = probabilities(s), probabilities(t)
    eps = 1e-7
    expected = sum(p_t[i][j] * math.log((p_t[i][j] + eps) / (p_s[i][j] + eps)) for i in range(4) for j in range(4)) / 16
    assert run(create_method("pkt", pkt_weight=2.0), {"f": s}, {"f": t})["pkt"].item() == pytest.approx(2.0 * expected, rel=1e-5)


def test_rkd_matches_distances_and_angles_written_out():
    s, t = randn(4, 5, seed=9), randn(4, 3, seed=10)
    b = 4

    def distances(x):
        d = [[math.sqrt(sum((float(x[i][k]) - float(x[j][k])) ** 2 for k in range(x.shape[1]))) for j in range(b)] for i in range(b)]
        mean = sum(d[i][j] for i in range(b) for j in range(b) if i != j) / (b * b - b)
        return [[d[i][j] / mean for j in range(b)] for i in range(b)]

    def angles(x):
        e = [[unit([float(x[j][k]) - float(x[i][k]) for k in range(x.shape[1])]) for j in range(b)] for i in range(b)]
        return [dot(e[i][j], e[i][k]) for i in range(b) for j in range(b) for k in range(b)]

    d_s, d_t = distances(s), distances(t)
    expected_d = sum(huber(d_s[i][j] - d_t[i][j]) for i in range(b) for j in range(b)) / (b * b)
    expected_a = sum(huber(u - v) for u, v in zip(angles(s), angles(t))) / b**3
    losses = run(create_method("rkd", distance_weight=2.0, angle_weight=3.0), {"f": s}, {"f": t})
    assert losses["rkd_distance"].item() == pytest.approx(2.0 * expected_d, rel=1e-5)
    assert losses["rkd_angle"].item() == pytest.approx(3.0 * expected_a, rel=1e-5)


def test_cc_matches_the_taylor_kernel_and_the_kernel_approximates_the_rbf():
    s, t = randn(4, 6, seed=11), randn(4, 9, seed=12)
    method = create_method("cc", cc_weight=5.0, gamma=0.4, order=2, feat_dim=3)
    losses = run(method, {"f": s}, {"f": t})
    with torch.no_grad():  # the embedding adapters: linear then unit rows
        e_s, e_t = method.embed_student(s), method.embed_teacher(t)
        lin = method.embed_student.linear
        assert e_s[0].tolist() == pytest.approx(unit((lin.weight @ s[0] + lin.bias).tolist()), abs=1e-6)

    def correlation(x, gamma, order):
        x = [unit(r) for r in x]
        return [[sum(math.exp(-2 * gamma) * (2 * gamma) ** p / math.factorial(p) * dot(x[i], x[j]) ** p for p in range(order + 1))
                 for j in range(4)] for i in range(4)]

    c_s, c_t = correlation(e_s, 0.4, 2), correlation(e_t, 0.4, 2)
    expected = sum((c_t[i][j] - c_s[i][j]) ** 2 for i in range(4) for j in range(4)) / 16
    assert losses["cc"].item() == pytest.approx(5.0 * expected, rel=1e-5)
    x = [unit(r) for r in e_s]  # with many terms the series is exp(-γ‖x_i − x_j‖²)
    rbf = math.exp(-0.4 * sum((a - b) ** 2 for a, b in zip(x[0], x[1])))
    assert correlation(e_s, 0.4, 30)[0][1] == pytest.approx(rbf, rel=1e-9)


def test_vid_matches_the_gaussian_negative_log_likelihood_per_channel():
    s, t = randn(2, 3, 4, 4, seed=13), randn(2, 5, 2, 2, seed=14)
    method = create_method("vid", vid_weight=2.0, init_variance=5.0, eps=1e-5, student_taps=["a"], teacher_taps=["b"])
    losses = run(method, {"f0": s}, {"f0": t})
    alpha = method.log_scales["f0"].detach()
    var = [math.log(1 + math.exp(float(a))) + 1e-5 for a in alpha]
    assert var[0] == pytest.approx(5.0, rel=1e-6)
    with torch.no_grad():
        mean = method.regressors["f0"](block_mean(s, 2, 2))  # the regressor adapter, on the pooled student map
    terms = [0.5 * ((float(mean[n, c, i, j]) - float(t[n, c, i, j])) ** 2 / var[c] + math.log(var[c]))
             for n in range(2) for c in range(5) for i in range(2) for j in range(2)]
    assert losses["vid"].item() == pytest.approx(2.0 * sum(terms) / len(terms), rel=1e-5)


def test_crd_scores_normalisers_nce_and_memory_update_written_out():
    n_train, k, dim, T = 12, 5, 3, 0.1
    info = info_for(n_train, classes=3, index=torch.arange(n_train) * 2)  # odd indices belong to a validation split
    method = create_method("crd", crd_weight=0.5, feat_dim=dim, nce_k=k, nce_t=T, nce_momentum=0.25)
    s, t = randn(3, 4, seed=15), randn(3, 6, seed=16)
    batch_index, targets = torch.tensor([0, 6, 10]), torch.tensor([0, 0, 2])
    method.build({"f": s.shape}, {"f": t.shape}, info)
    assert method.memory_student.shape == (info.index_space, dim) == (23, dim)
    mem_s, mem_t = method.memory_student.clone(), method.memory_teacher.clone()
    torch.manual_seed(3)
    negatives = method.draw_negatives(targets)
    torch.manual_seed(3)
    batch = Batch(torch.zeros(3, 3, 8, 8), targets, batch_index)
    loss = method(Outputs(torch.zeros(3, 3), {"f": s}), Outputs(torch.zeros(3, 3), {"f": t}), batch, 0)["crd"]
    with torch.no_grad():
        v_s, v_t = method.embed_student(s), method.embed_teacher(t)

    def nce(p):
        noise = k / n_train
        return -sum(math.log(r[0] / (r[0] + noise + 1e-7)) + sum(math.log(noise / (x + noise + 1e-7)) for x in r[1:]) for r in p) / len(p)

    expected = 0.0
    for v, bank in ((v_s, mem_t), (v_t, mem_s)):
        rows = [[int(batch_index[b])] + negatives[b].tolist() for b in range(3)]
        scores = [[math.exp(dot(bank[r], v[b]) / T) for r in rows[b]] for b in range(3)]
        z = sum(map(sum, scores)) / (3 * (k + 1)) * n_train  # fixed from the first batch
        expected += nce([[x / z for x in row] for row in scores])
    assert loss.item() == pytest.approx(0.5 * expected, rel=1e-5)
    for bank, old, v in ((method.memory_student, mem_s, v_s), (method.memory_teacher, mem_t, v_t)):
        for b, row in enumerate(batch_index.tolist()):
            mixed = [0.25 * float(o) + 0.75 * float(x) for o, x in zip(old[row], v[b])]
            assert bank[row].tolist() == pytest.approx(unit(mixed), abs=1e-6)
        untouched = [r for r in range(23) if r not in batch_index.tolist()]
        assert torch.equal(bank[untouched], old[untouched])


def test_crd_negatives_are_uniform_over_other_classes_of_the_training_set():
    info = info_for(12, classes=3, index=torch.arange(12) * 2 + 1)
    method = create_method("crd", feat_dim=2, nce_k=6000)
    method.build({"f": (2, 4)}, {"f": (2, 4)}, info)
    label = dict(zip(info.index.tolist(), info.targets.tolist()))
    torch.manual_seed(0)
    for target in range(3):
        drawn = method.draw_negatives(torch.tensor([target]))[0].tolist()
        assert set(drawn) == {i for i, c in label.items() if c != target}
        counts = [drawn.count(i) for i in set(drawn)]
        assert max(counts) / min(counts) < 1.2  # 8 candidates, 750 expected draws each


def test_ofd_margin_is_the_truncated_normal_mean_and_the_partial_l2_is_written_out():
    teacher = nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.ReLU())
    with torch.no_grad():
        teacher[1].weight.copy_(torch.tensor([1.0, -2.0, 0.5, 0.1]))
        teacher[1].bias.copy_(torch.tensor([0.0, 1.0, -0.3, 0.5]))  # last channel: P(x < 0) < 0.001
    margins = []
    for g, b in zip(teacher[1].weight.tolist(), teacher[1].bias.tolist()):
        if truncnorm.cdf(0, -math.inf, math.inf, loc=b, scale=abs(g)) > 0.001:
            margins.append(truncnorm.mean(-math.inf, (0 - b) / abs(g), loc=b, scale=abs(g)))
        else:
            margins.append(-3 * abs(g))
    s, t = randn(2, 3, 4, 4, seed=17), randn(2, 4, 2, 2, seed=18)
    s2, t2 = randn(2, 2, 2, 2, seed=19), randn(2, 4, 2, 2, seed=20)
    method = create_method("ofd", ofd_weight=0.5, student_taps=["x", "y"], teacher_taps=["1", "1"])
    losses = run(method, {"f0": s, "f1": s2}, {"f0": t, "f1": t2}, taps=(None, teacher))
    assert method.margin_f0.tolist() == pytest.approx(margins, rel=1e-5)
    expected = 0.0
    for j, (x, y) in enumerate(((s, t), (s2, t2))):
        with torch.no_grad():
            c = method.connectors[f"f{j}"](block_mean(x, 2, 2) if x.shape[2] == 4 else x)
        total = 0.0
        for n in range(2):
            for ch in range(4):
                for i in range(2):
                    for w in range(2):
                        target = max(float(y[n, ch, i, w]), margins[ch])
                        src = float(c[n, ch, i, w])
                        if src > target or target > 0:
                            total += (src - target) ** 2
        expected += total / 2 ** (1 - j)
    assert losses["ofd"].item() == pytest.approx(0.5 * expected / 2, rel=1e-5)


def test_ofd_reads_the_bn_before_each_zoo_preact_tap_and_refuses_pairs_it_cannot_serve():
    from distillscope.methods.ofd import bn_margin

    teacher = create_model("resnet32x4", 10)
    for bn in (m for m in teacher.modules() if isinstance(m, nn.BatchNorm2d)):
        nn.init.uniform_(bn.weight, 0.5, 2.0), nn.init.uniform_(bn.bias, -1.0, 1.0)
    method = create_method("ofd")
    s_taps, t_taps = method.taps(create_model("resnet8", 10), teacher)
    assert t_taps == {"f0": "preact:-3", "f1": "preact:-2", "f2": "preact:-1"}
    x = torch.randn(2, 3, 16, 16)
    shapes = [{k: v.shape for k, v in FeatureTaps(m, taps)(x)[1].items()}
              for m, taps in ((create_model("resnet8", 10), s_taps), (teacher, t_taps))]
    method.build(*shapes, info_for())
    for k, layer in zip(("f0", "f1", "f2"), (teacher.layer1, teacher.layer2, teacher.layer3)):
        assert torch.equal(getattr(method, f"margin_{k}"), bn_margin(layer[-1].bn2))  # the residual branch's last BN

    class Plain(nn.Module):  # no declared taps
        def forward(self, x):
            return x

    with pytest.raises(DistillscopeError, match="Plain declares no preact taps.*student_taps"):
        create_method("ofd").taps(Plain(), teacher)
    bad = create_method("ofd")
    _, t_taps = bad.taps(create_model("resnet8", 10), create_model("shufflenetv2", 10))
    shapes = [{k: v.shape for k, v in FeatureTaps(create_model(m, 10), taps)(x)[1].items()}
              for m, taps in (("resnet8", s_taps), ("shufflenetv2", t_taps))]
    with pytest.raises(DistillscopeError, match="no BatchNorm with 116 channels feeds teacher tap 'preact:-3'"):
        bad.build(*shapes, info_for())


def test_reviewkd_hierarchical_context_loss_and_fusion_wiring():
    from distillscope.methods.reviewkd import hcl_loss

    def hcl(fs, ft):  # weights 1, 1/2, 1/4, 1/8 for the map and its 4×4, 2×2, 1×1 pools smaller than it
        pools = [n for n in (4, 2, 1) if n < fs.shape[2]]
        levels = [(1.0, fs, ft)] + [(0.5 ** (i + 1), block_mean(fs, n, n), block_mean(ft, n, n)) for i, n in enumerate(pools)]
        return sum(w * ((a - b) ** 2).mean().item() for w, a, b in levels) / sum(w for w, _, _ in levels)

    fs, ft = randn(2, 3, 8, 8, seed=21), randn(2, 3, 8, 8, seed=22)
    assert hcl_loss(fs, ft).item() == pytest.approx(hcl(fs, ft), rel=1e-5)
    small = randn(2, 3, 2, 2, seed=23)  # a 2×2 map keeps only the 1×1 pool
    assert hcl_loss(small, small + 1).item() == pytest.approx((1 + 0.5) / 1.5, rel=1e-6)

    s = {"f0": randn(2, 4, 4, 4, seed=24), "f1": randn(2, 5, 2, 2, seed=28), "f2": randn(2, 6, seed=25)}
    t = {"f0": randn(2, 5, 8, 8, seed=26), "f1": randn(2, 3, 2, 2, seed=29), "f2": randn(2, 7, seed=27)}
    method = create_method("reviewkd", reviewkd_weight=2.0, warmup_epochs=4.0, mid_channels=3, student_taps=["a", "b", "c"],
                           teacher_taps=["d", "e", "f"])
    losses = run(method, s, t, epoch=1)
    assert method.fusions["f2"].attention is None and method.fusions["f0"].attention is not None

    def nearest(x, factor):
        return x.repeat_interleave(factor, 2).repeat_interleave(factor, 3)

    def fuse(abf, x, deeper):  # ABF's mixing written out: reduced student map and deeper map weighted by two sigmoids
        x = abf.reduce(x)
        w = torch.sigmoid(abf.attention[0](torch.cat([x, deeper], 1)))
        return x * w[:, :1] + deeper * w[:, 1:]

    with torch.no_grad():
        fused2 = method.fusions["f2"].reduce(s["f2"][:, :, None, None])
        out2 = method.fusions["f2"].out(fused2)
        fused1 = fuse(method.fusions["f1"], s["f1"], nearest(fused2, 2))
        out1 = method.fusions["f1"].out(fused1)
        fused0 = nearest(fuse(method.fusions["f0"], s["f0"], nearest(fused1, 2)), 2)  # then 4×4 → the teacher's 8×8
        out0 = method.fusions["f0"].out(fused0)
    expected = hcl(out0, t["f0"]) + hcl(out1, t["f1"]) + hcl(out2, t["f2"][:, :, None, None])
    assert losses["reviewkd"].item() == pytest.approx(2.0 * 0.5 * expected, rel=1e-5)  # epoch 1 of a 4-epoch warm-up: (1 + 1) / 4
    assert run(create_method("reviewkd", student_taps=["a"], teacher_taps=["b"]), {"f0": s["f0"]}, {"f0": t["f0"]},
               epoch=0)["reviewkd"].item() > 0


def test_simkd_loss_classifier_and_deployable_model():
    student, teacher = create_model("resnet8", 10).eval(), create_model("wrn_16_1", 10).eval()
    method = create_method("simkd", simkd_weight=3.0)
    s_taps, t_taps = method.taps(student, teacher)
    x = torch.randn(2, 3, 16, 16)
    s_feat, t_feat = FeatureTaps(student, s_taps)(x)[1]["f"], FeatureTaps(teacher, t_taps)(x)[1]["f"]
    method.build({"f": s_feat.shape}, {"f": t_feat.shape}, info_for(classes=10))
    assert torch.equal(method.fc.weight, teacher.fc.weight) and not method.fc.weight.requires_grad
    method.eval()
    outputs = Outputs(torch.zeros(2, 10), {"f": s_feat})
    loss = method(outputs, Outputs(torch.zeros(2, 10), {"f": t_feat}), Batch(x, torch.tensor([0, 1]), torch.arange(2)), 0)
    assert set(loss) == {"simkd"}  # no label loss by default
    with torch.no_grad():
        projected = method.projector(s_feat)
        assert loss["simkd"].item() == pytest.approx(3.0 * ((projected - t_feat) ** 2).mean().item(), rel=1e-5)
        model = method.deployable(student)
        logits = model(x)
        pooled = projected.mean(dim=(2, 3))
        assert torch.allclose(logits, pooled @ teacher.fc.weight.T + teacher.fc.bias, atol=1e-5)
        assert torch.allclose(outputs.predictions, logits, atol=1e-5)  # train top-1 reads what the deployable predicts
    assert model.stage_taps[-1] == "projector" and model.embedding_tap == "fc@input"
    emb = FeatureTaps(model, ["embedding", "stage:-1"])(x)[1]
    assert torch.allclose(emb["embedding"], emb["stage:-1"].mean(dim=(2, 3)), atol=1e-6)
    with pytest.raises(DistillscopeError, match="no Linear classifier at 'head'"):
        create_method("simkd", teacher_classifier="head").taps(student, teacher)


def test_tap_lists_are_checked():
    with pytest.raises(DistillscopeError, match="give student_taps and teacher_taps together"):
        create_method("at", student_taps=["stage:1"])
    with pytest.raises(DistillscopeError, match="non-empty list of tap specs"):
        create_method("vid", student_taps="stage:1", teacher_taps="stage:1")
    with pytest.raises(DistillscopeError, match="nce_k >= 1"):
        create_method("crd", nce_k=0)


# ----------------------------------------------------------------------------- gradients on zoo models
@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_gradients_reach_student_and_adapters_never_the_teacher(name):
    torch.manual_seed(0)
    student, teacher = create_model("resnet8", 10), create_model("wrn_16_1", 10).eval()
    params = {"crd": {"nce_k": 16}, "reviewkd": {"warmup_epochs": 0.0}}.get(name, {})
    method = create_method(name, **params)
    s_taps, t_taps = method.taps(student, teacher)
    s_net, t_net = FeatureTaps(student, s_taps), FeatureTaps(teacher, t_taps)
    x, y = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        shapes = ({k: v.shape for k, v in s_net(x[:2])[1].items()}, {k: v.shape for k, v in t_net(x[:2])[1].items()})
    method.build(*shapes, info_for(8, classes=10))
    logits, feats = s_net(x)
    t_logits, t_feats = t_net(x)  # with autograd on: a method that used it would reach the teacher
    losses = method(Outputs(logits, feats), Outputs(t_logits, t_feats), Batch(x, y, torch.arange(4)), 1)
    sum(losses.values()).backward()
    assert all(math.isfinite(v.item()) for v in losses.values())
    assert all(p.grad is None for p in teacher.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())
    adapters = [p for p in method.parameters() if p.requires_grad]
    assert (len(adapters) > 0) == (name in {"cc", "vid", "crd", "simkd", "reviewkd", "ofd"})
    assert all(p.grad is not None for p in adapters)


# ----------------------------------------------------------------------------- recipes end to end
@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "wrn_16_1"
    Trainer(load_config(None, TINY + ["student.name=wrn_16_1", "epochs=1"]), out).fit()
    return out


def _recipe(name, teacher):
    return load_config(REPO / "configs" / "cifar10_5k" / f"resnet8_{name}.yaml",
                       TINY + ["teacher.name=wrn_16_1", f"teacher.checkpoint={teacher}"])


def _comparable(history):
    return [{k: v for k, v in row.items() if k != "img_per_s"} for row in history]


@pytest.mark.parametrize("name", FEATURE_METHODS)
def test_recipe_trains_and_resumes_exactly(name, tiny_teacher, tmp_path, interrupt_at):
    assert load_config(REPO / "configs" / "cifar100" / f"resnet8x4_{name}.yaml").method["name"] == name
    cfg = _recipe(name, tiny_teacher)
    full = Trainer(cfg, tmp_path / "full")
    before = {k: v.clone() for k, v in full.teacher.state_dict().items()}
    reference = full.fit()
    assert all(torch.equal(before[k], v) for k, v in full.teacher.state_dict().items())
    assert f"train/{name if name != 'rkd' else 'rkd_angle'}" in reference["last"]

    cut = Trainer(cfg, tmp_path / "cut")
    interrupt_at(cut, 5)  # in the middle of epoch 2 (4 steps per epoch)
    resumed = Trainer(cfg, tmp_path / "cut", resume=True).fit()
    read = lambda run: [json.loads(x) for x in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert _comparable(read("cut")) == _comparable(read("full"))
    assert _comparable([resumed["last"]]) == _comparable([reference["last"]])
    full_state, _ = load_checkpoint(tmp_path / "full" / "last.safetensors")
    cut_state, _ = load_checkpoint(tmp_path / "cut" / "last.safetensors")
    method_keys = [k for k in full_state if k.startswith("method.")]
    assert all(torch.equal(full_state[k], cut_state[k]) for k in method_keys)
    if name == "crd":  # the banks were saved mid-epoch, restored, and end where the uninterrupted run's do
        assert {"method.memory_student", "method.memory_teacher", "method.normalizers"} <= set(method_keys)
        assert full_state["method.normalizers"].min() > 0


def test_simkd_checkpoint_is_a_whole_model_for_load_model_and_eval(tiny_teacher, tmp_path, capsys):
    summary = Trainer(_recipe("simkd", tiny_teacher), tmp_path / "run").fit()
    model, state = load_model(tmp_path / "run")
    assert type(model).__name__ == "ProjectedStudent" and state["model"] == "resnet8"
    assert not any(p.requires_grad is False and "projector" in n for n, p in model.named_parameters())
    capsys.readouterr()
    assert cli.main(["eval", str(tmp_path / "run"), "--data", "shapes?n=160&size=16&n_test=40", "--device", "cpu", "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["top1"] == summary["best"]["test/top1"]
    assert metrics["nll"] == pytest.approx(summary["best"]["test/nll"], rel=1e-6)  # the same logits, not just the same hits
    plain = evaluate(model.backbone, Loader(load_data("shapes?n=160&size=16&n_test=40").test, 512, tuple(state["mean"]),
                                            tuple(state["std"])))
    assert plain["nll"] != pytest.approx(metrics["nll"], rel=1e-3)  # the student's own head predicts differently
    last, _ = load_model(tmp_path / "run" / "last.safetensors")
    assert type(last).__name__ == "ProjectedStudent"


def test_train_top1_reads_the_predictions_a_method_sets(tiny_teacher, tmp_path, monkeypatch):
    from distillscope.methods.simkd import SimKD

    original = SimKD.distill_losses

    def perfect(self, student, teacher, batch, epoch):  # the method's prediction: always right
        losses = original(self, student, teacher, batch, epoch)
        student.predictions = F.one_hot(batch.targets, student.logits.shape[1]).float()
        return losses

    monkeypatch.setattr(SimKD, "distill_losses", perfect)
    Trainer(_recipe("simkd", tiny_teacher), tmp_path / "run").fit()
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["train/top1"] for row in rows] == [100.0] * len(rows)
