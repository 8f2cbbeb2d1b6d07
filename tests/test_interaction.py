"""The Interaction Tensor against independent computations: numpy eigenvectors, corrcoef loops, a hand trace of
the clustering rule and a planted case whose Ω and statistics are known by construction."""
import html
import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from distillscope.analysis import interaction as interaction_module
from distillscope.analysis.interaction import (
    DEFAULT_LAYER, FIGURES, cluster_components, correlation_threshold, cross_correlations, images_and_labels, interaction_from_runs,
    interaction_tensor, interaction_warnings, pca_projections, presence,
)
from distillscope.cli import build_parser, main
from distillscope.config import load_config
from distillscope.data import load_data, normalize
from distillscope.engine import Trainer, load_model
from distillscope.errors import DistillscopeError
from distillscope.models import FeatureTaps
from distillscope.report.html import ReportSettings
from distillscope.report.sections.interaction import section_interaction


def test_pca_projections_are_the_top_covariance_eigenvectors_with_the_extreme_entry_positive():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 6)) @ np.diag([5, 4, 3, 2, 1, 0.5]) + 3.0
    for centre in (True, False):
        base = x - x.mean(0) if centre else x
        values, vectors = np.linalg.eigh(base.T @ base)
        expected = base @ vectors[:, np.argsort(values)[::-1][:3]]
        p = pca_projections(x, 3, centre=centre)
        for k in range(3):
            sign = np.sign(p[:, k] @ expected[:, k])
            np.testing.assert_allclose(p[:, k], sign * expected[:, k], atol=1e-9)
            assert p[np.abs(p[:, k]).argmax(), k] > 0
    with pytest.raises(DistillscopeError, match="components"):
        pca_projections(x, 7)


def test_pca_projections_with_fewer_points_than_dims_match_the_svd():
    # N < D takes the N×N Gram path (P = U_K S_K); the reference is numpy's SVD of the (centred) matrix
    rng = np.random.default_rng(7)
    x = rng.normal(size=(20, 50)) * np.linspace(3, 0.5, 50) + 1.0
    for centre in (True, False):
        base = x - x.mean(0) if centre else x
        u, s, _ = np.linalg.svd(base, full_matrices=False)
        p = pca_projections(x, 6, centre=centre)
        for k in range(6):
            expected = u[:, k] * s[k]
            np.testing.assert_allclose(p[:, k], np.sign(p[:, k] @ expected) * expected, atol=1e-8)
            assert p[np.abs(p[:, k]).argmax(), k] > 0


def test_cross_correlations_match_corrcoef_loops_and_gamma_is_the_percentile_of_all_entries():
    rng = np.random.default_rng(1)
    p = rng.normal(size=(3, 40, 4))
    p[1, :, 2] = p[0, :, 1] * 2 + 0.1 * rng.normal(size=40)  # one strong cross-model pair
    lam = cross_correlations(p, chunk=5)
    assert lam.shape == (3, 3, 4, 4)
    values = []
    for m in range(3):
        for q_model in range(3):
            for k in range(4):
                for q in range(4):
                    r = np.corrcoef(p[m, :, k], p[q_model, :, q])[0, 1]
                    assert lam[m, q_model, k, q] == pytest.approx(r, abs=1e-5)
                    values.append(abs(r))
    ordered = sorted(values)
    position = 0.99 * (len(ordered) - 1)  # linear interpolation between the neighbouring order statistics
    lo = int(position)
    expected = ordered[lo] + (position - lo) * (ordered[lo + 1] - ordered[lo])
    assert correlation_threshold(lam, 99) == pytest.approx(expected, abs=1e-5)


def test_clustering_follows_a_hand_trace_with_stealing():
    # 3 models × 2 components, γ = 0.5; components in order a=(0,0) b=(0,1) c=(1,0) d=(1,1) e=(2,0) f=(2,1)
    strength = {("a", "c"): 0.7, ("a", "f"): 0.6, ("b", "f"): -0.8, ("b", "c"): 0.55, ("d", "f"): 0.75, ("d", "e"): 0.4}
    index = {name: (i // 2, i % 2) for i, name in enumerate("abcdef")}
    lam = np.zeros((3, 3, 2, 2))
    for name, (m, k) in index.items():
        lam[m, m, k, k] = 1.0
    for (u, v), r in strength.items():
        (m, k), (p, q) = index[u], index[v]
        lam[m, p, k, q] = lam[p, m, q, k] = r
    assignment, best = cluster_components(lam, 0.5)
    # a starts 0, claims c (0.7) and f (0.6); b starts 1, steals f (|−0.8| > 0.6) but not c (0.55 < 0.7);
    # c is taken; d starts 2 and cannot steal f (0.75 < 0.8), e (0.4) is below γ; e starts 3.
    # (With the authors' integer 'best' every claim reads 0: b would take c, and d would take f.)
    np.testing.assert_array_equal(assignment, [[0, 1], [0, 2], [3, 1]])
    np.testing.assert_allclose(best, [[1, 1], [0.7, 1], [1, 0.8]])


def test_presence_is_the_positive_side_above_the_models_percentile():
    p = np.array([[4.0, -1.0], [2.0, 0.5], [-8.0, 1.0], [1.0, 0.0], [0.0, -0.25]])
    ratio = p / np.array([8.0, 1.0])  # max |P| per component
    entries = sorted(ratio.ravel())
    position = 0.7 * (len(entries) - 1)
    threshold = entries[int(position)] + (position - int(position)) * (entries[int(position) + 1] - entries[int(position)])
    expected = ratio > threshold
    np.testing.assert_array_equal(presence(p, 70), expected)
    assert not presence(p, 70)[2, 0]  # the largest magnitude is negative: not present


def _planted(models=4, n=300, seed=0):
    """Every model: a shared rank-1 feature (3 on points 0..29, −1.5 on 30..89) and two private ones (2/−1 and
    1/−0.5 on supports drawn from points 90..299). Columns within a model have disjoint supports and zero mean,
    so PCA returns them exactly; normalised projections are 1 on the positive support, 10% of every model's
    entries, so the 90th percentile falls between 0 and 1."""
    features, supports = [], []
    for m in range(models):
        perm = np.random.default_rng(seed + m).permutation(np.arange(90, n))
        cols, pos = [], []
        for h, (plus, minus) in zip((3.0, 2.0, 1.0), ((np.arange(30), np.arange(30, 90)), (perm[:30], perm[30:90]),
                                                      (perm[90:120], perm[120:180]))):
            col = np.zeros(n)
            col[plus], col[minus] = h, -h / 2
            cols.append(col)
            pos.append(set(plus.tolist()))
        features.append(np.stack(cols, 1))
        supports.append(pos)
    return features, supports


def test_a_planted_shared_feature_gives_the_known_tensor_and_statistics():
    features, supports = _planted()
    projections = [pca_projections(f, 3) for f in features]
    for f, p in zip(features, projections):
        np.testing.assert_allclose(p, f, atol=1e-9)  # PCA recovers the planted columns, signs included
    private = [abs(np.corrcoef(features[m][:, a], features[q][:, b])[0, 1])
               for m in range(4) for q in range(4) if m != q for a in (1, 2) for b in (1, 2)]
    assert max(private) < 0.5  # so γ = 0.5 separates shared from private
    confidence = np.random.default_rng(5).uniform(0.2, 1.0, size=(4, 300))
    result = interaction_tensor(projections, {"A": [0, 1], "B": [2, 3]}, confidence=confidence, gamma=0.5)

    np.testing.assert_array_equal(result.assignment, [[0, 1, 2], [0, 3, 4], [0, 5, 6], [0, 7, 8]])
    expected = np.zeros((4, 300, 9), dtype=bool)
    for m in range(4):
        for k, t in enumerate((0, 1 + 2 * m, 2 + 2 * m)):
            expected[m, sorted(supports[m][k]), t] = True
    np.testing.assert_array_equal(result.omega(), expected)

    stats = result.stats
    for name, rows in (("A", [0, 1]), ("B", [2, 3])):
        group = stats["groups"][name]
        assert group["features"] == 5 and group["mean_frequency"] == 30 and group["frequency_sorted"] == [30] * 5
        per_point = [len({t for m in rows for k, t in enumerate(result.assignment[m]) if n in supports[m][k]}) for n in range(300)]
        assert group["features_per_point"] == per_point
        assert group["features_per_point_mean"] == pytest.approx(np.mean(per_point))
        r = pearsonr(per_point, confidence[rows].mean(0))[0]
        assert group["confidence_vs_features"]["pearson"] == pytest.approx(r)
    assert stats["shared"]["all_groups"] == 1 and stats["shared"]["pairwise"] == {"A&B": 1}
    assert stats["shared"]["regions"] == {"A": 4, "B": 4, "A&B": 1}
    assert stats["shared"]["frequency_sorted_of_shared"] == {"A": [30], "B": [30]}
    json.loads(result.to_json())


def test_groups_must_cover_every_model_once():
    features, _ = _planted(models=2)
    with pytest.raises(DistillscopeError, match="exactly once"):
        interaction_tensor([pca_projections(f, 3) for f in features], {"A": [0], "B": [0]})


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    overrides = ["epochs=1", "data.spec=shapes?n=160&size=16&n_test=60", "data.val_fraction=0.2", "data.batch_size=32",
                 "data.num_workers=0", "student.name=resnet8", "run.progress=false", "run.threads=1", "run.device=cpu"]
    for seed in (0, 1):
        Trainer(load_config(None, overrides + [f"seed={seed}"]), root / f"s{seed}").fit()
    return root


def test_from_runs_and_the_cli_write_json_and_figures(two_runs, tmp_path, capsys):
    data = "shapes?n=160&size=16&n_test=60"
    result = interaction_from_runs({"a": [two_runs / "s0"], "b": [two_runs / "s1"]}, data, components=8, progress=False)
    assert result.present.shape == (2, 60, 8) and result.stats["groups"]["a"]["top1"] >= 0
    # the default tap is resnet8's last stage map (64 × 4 × 4 at 16 px), flattened, not pooled: redo it by hand
    assert result.settings["layer"] == "stage:-1" and result.layer_dims == [1024, 1024]
    model, state = load_model(two_runs / "s0")
    images, _ = images_and_labels(load_data(data).test)
    with FeatureTaps(model.eval(), {"f": "stage:-1"}) as taps, torch.no_grad():
        stage = taps(normalize(images, tuple(state["mean"]), tuple(state["std"])))[1]["f"]
    assert stage.shape == (60, 64, 4, 4)
    by_hand = pca_projections(stage.flatten(1).double().numpy(), 8).astype(np.float32)
    np.testing.assert_array_equal(result.present[0], presence(by_hand))
    out = tmp_path / "it"
    assert main(["interaction", "--group", f"a={two_runs / 's0'}", "--group", f"b={two_runs / 's1'}", "--data", data,
                 "--components", "8", "--out", str(out)]) == 0
    printed = capsys.readouterr()
    assert "features" in printed.out and "shared by all groups" in printed.out
    lines = [line for line in printed.err.splitlines() if line.startswith("warning:")]  # stderr also holds the progress bars
    assert len(lines) == 1 and lines[0].startswith("warning: small groups: the Interaction Tensor compares groups of models")
    saved = json.loads((out / "interaction.json").read_text())
    assert saved["groups"]["a"]["features"] == result.stats["groups"]["a"]["features"]
    assert saved["layer_dims"] == {str(two_runs / "s0"): 1024, str(two_runs / "s1"): 1024}
    assert [w["kind"] for w in saved["warnings"]] == ["small_groups"] and saved["settings"]["layer"] == "stage:-1"
    # the pooled embedding (64 dims, 60 points) with 52 components saturates, and says so
    runs = f"a={two_runs / 's0'},{two_runs / 's1'},{two_runs / 's0'}"
    embedding = ["interaction", "--group", runs, "--layer", "embedding"]
    assert main([*embedding, "--data", data, "--components", "52", "--out", str(tmp_path / "emb")]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("warning: saturated: K = 52 components of 60 points")
    more = "shapes?n=160&size=16&n_test=80"  # 80 points for 70 components, but the embedding has 64 dims
    assert main([*embedding, "--data", more, "--components", "70", "--out", str(tmp_path / "e2")]) == 2
    assert "has 64 dims, fewer than 70 components" in capsys.readouterr().err
    for name in FIGURES:
        assert (out / name).stat().st_size > 1000
    assert main(["interaction", "--group", f"a={two_runs / 's0'}", "--data", data, "--components", "8",
                 "--out", str(out)]) == 2  # never overwrites
    assert main(["interaction", "--group", "nonsense", "--data", data, "--out", str(tmp_path / "x")]) == 2
    assert "NAME=RUN" in capsys.readouterr().err


# ----------------------------------------------------------------------------- default layer and warnings
def test_default_layer_is_the_last_stage_map_everywhere(monkeypatch):
    assert DEFAULT_LAYER == "stage:-1"
    args = build_parser().parse_args(["interaction", "--group", "a=r", "--data", "shapes", "--out", "o"])
    assert args.layer == DEFAULT_LAYER
    assert interaction_from_runs.__defaults__[0] == DEFAULT_LAYER  # layer is the first keyword argument
    called = {}

    def fake(groups, spec, **options):
        called.update(options)
        raise DistillscopeError("stop here")

    monkeypatch.setattr(interaction_module, "interaction_from_runs", fake)
    with pytest.raises(DistillscopeError, match="stop here"):
        section_interaction(_fake_context({"a": ["r"]}, {"components": 5}))
    assert called["layer"] == DEFAULT_LAYER and called["components"] == 5  # the report's default, its options kept
    with pytest.raises(DistillscopeError, match="stop here"):
        section_interaction(_fake_context({"a": ["r"]}, {"layer": "embedding"}))
    assert called["layer"] == "embedding"


def test_saturation_warning_fires_above_three_quarters_of_min_points_dims():
    three = {"g": [0, 1, 2]}

    def kinds(components, points, dims):
        return [w["kind"] for w in interaction_warnings(components, points, three, layer_dims=[dims] * 3)]

    assert kinds(50, 1000, 40) == ["saturated"]  # K > D: PCA keeps everything
    assert kinds(50, 1000, 62) == ["saturated"]  # K > 0.8 × D
    assert kinds(50, 1000, 64) == ["saturated"]  # resnet8's embedding: 50 > 0.75 × 64 = 48
    assert kinds(50, 1000, 400) == [] and kinds(48, 1000, 64) == []  # 48 = 0.75 × 64: not above
    assert kinds(50, 60, 4096) == ["saturated"]  # N binds: 50 > 0.75 × 60
    assert kinds(50, 1000, 4096) == []
    (warning,) = interaction_warnings(50, 1000, three, ["m0", "m1", "m2"], [64, 4096, 64], "embedding")
    assert warning["models"] == ["m0", "m2"] and warning["dims"] == 64
    assert "K = 50 components of a 64-dimensional layer embedding for 2 of 3 models" in warning["message"]
    assert "--layer stage:-1" in warning["message"]
    assert interaction_warnings(50, 1000, three) == []  # no dims known: nothing to say


def _random_result(dims: int, groups: dict[str, list[int]], points: int = 400, components: int = 50):
    rng = np.random.default_rng(dims)
    models = sum(len(rows) for rows in groups.values())
    features = [rng.normal(size=(points, dims)) * np.linspace(2, 0.2, dims) for _ in range(models)]
    confidence = rng.uniform(0.1, 1.0, size=(models, points))
    return interaction_tensor([pca_projections(f, components) for f in features], groups, confidence=confidence, layer_dims=[dims] * models,
                              settings={"layer": "stage:-1"})


def test_the_result_records_layer_dims_and_warnings():
    saturated = _random_result(60, {"a": [0, 1, 2]})  # K = 50 > 0.75 × 60
    assert [w["kind"] for w in saturated.stats["warnings"]] == ["saturated"]
    record = json.loads(saturated.to_json())
    assert record["layer_dims"] == {"model0": 60, "model1": 60, "model2": 60}
    assert record["warnings"][0]["message"].startswith("saturated: K = 50 components of a 60-dimensional layer stage:-1")
    wide = _random_result(400, {"a": [0, 1, 2], "b": [3, 4, 5]})
    assert wide.stats["warnings"] == [] and json.loads(wide.to_json())["warnings"] == []


def test_group_size_warning_fires_below_three_models_per_group():
    def small(groups):
        return [w for w in interaction_warnings(5, 100, groups) if w["kind"] == "small_groups"]

    (one,) = small({"ce": [0], "kd": [1, 2], "teacher": [3, 4, 5]})
    assert one["groups"] == {"ce": 1, "kd": 2}
    assert "compares groups of models" in one["message"] and "ce (1 model), kd (2 models) have fewer than 3" in one["message"]
    assert small({"kd": [0, 1]})[0]["groups"] == {"kd": 2}
    assert small({"ce": [0, 1, 2], "kd": [3, 4, 5]}) == []
    # what the message claims: one model's group has its K components as features and ≈ K/10 of them per point
    result = _random_result(400, {"a": [0], "b": [1]})
    assert [w["kind"] for w in result.stats["warnings"]] == ["small_groups"]
    assert "features per point is ≈ 5.0" in result.stats["warnings"][0]["message"]
    for entry in result.stats["groups"].values():
        assert entry["features"] == 50 and entry["features_per_point_mean"] == pytest.approx(5.0, abs=0.05)


def _fake_context(groups, options):
    settings = ReportSettings(out="unused", split="test", progress=False, interaction=options)
    return SimpleNamespace(settings=settings, groups=groups, data=SimpleNamespace(spec="shapes"), device="cpu", model=None,
                           seeds=lambda g: ",".join(map(str, range(len(groups[g])))), basis=lambda n, runs: f"N = {n}; {runs}")


@pytest.mark.parametrize("dims, groups, shown", [
    (60, {"a": [0, 1, 2]}, ["saturated"]),
    (400, {"a": [0], "b": [1, 2]}, ["small_groups"]),
    (400, {"a": [0, 1, 2], "b": [3, 4, 5]}, []),
])
def test_the_report_section_shows_the_warnings_above_its_numbers(monkeypatch, dims, groups, shown):
    result = _random_result(dims, groups)
    monkeypatch.setattr(interaction_module, "interaction_from_runs", lambda *args, **options: result)
    section = section_interaction(_fake_context({g: [f"run{r}" for r in rows] for g, rows in groups.items()}, {}))
    page = section.html
    assert "compares groups of models" in page
    warnings = [w["message"] for w in result.stats["warnings"]]
    assert [w["kind"] for w in section.numbers["warnings"]] == shown
    assert page.count('class="warning"') == len(shown)
    for message in warnings:
        assert html.escape("⚠ " + message) in page and page.index('class="warning"') < page.index("<table>")
    for name, rows in groups.items():
        assert (f"<td>⚠ {name}</td>" in page) == (len(rows) < 3)
    assert f"({dims} dims per image" in page
