"""GlueModel and its parts (SoftDecay layer, I-STAR, cosine regulariser, fusion) on the real MiniLM
and real SST-2 / MRPC sentences from the mirror, plus exact checks on small float64 matrices."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from IsoScore import IsoScore as isoscore_package

from conftest import MINILM
from tokenuni.corpora import read_mirror
from tokenuni.finetune import GlueModel
from tokenuni.finetune.fusion import LayerFusion
from tokenuni.finetune.regularisers import IStar, mean_pairwise_cosine, resolve_layers
from tokenuni.finetune.softdecay_layer import SoftDecay, SpectralMap, softdecay_positive
from tokenuni.metrics.isoscore import isoscore_from_covariance, isoscore_from_covariance_torch, isoscore_torch

torch.set_num_threads(1)

VARIANTS = {
    "baseline": {},
    "softdecay_before": {"softdecay": {"alpha": -0.2, "trainable": True, "lr": 1e-3, "placement": "before_final_norm"}},
    "softdecay_after": {"softdecay": {"alpha": -0.2, "trainable": True, "lr": 1e-3, "placement": "after_final_norm"}},
    "istar_positive": {"istar": {"lambda": 1.0, "zeta": 0.2, "layers": [-1], "c0_tokens": 1000}},
    "istar_negative": {"istar": {"lambda": -1.0, "zeta": 0.2, "layers": [-1], "c0_tokens": 1000}},
    "cosine": {"cosine_regulariser": {"lambda": 0.1, "layers": [-1]}},
    "fusion_concat": {"fusion": {"kind": "concat", "layers": "all"}},
    "fusion_max": {"fusion": {"kind": "max", "layers": [-1, -2, -3]}},
    "fusion_gate": {"fusion": {"kind": "gate", "layers": "all"}, "pooling": "mean"},
    "softdecay_istar": {"softdecay": {"alpha": -0.2, "lr": 1e-3},
                        "istar": {"lambda": -1.0, "zeta": 0.2, "layers": "all", "c0_tokens": 2000}},
}


# -- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def minilm():
    from tokenuni.embed import load_model

    tokenizer, encoder = load_model(MINILM, "cpu")
    return tokenizer, encoder


@pytest.fixture(scope="module")
def sst2(mirror, minilm):
    """Six real SST-2 training sentences (both labels), tokenised."""
    tokenizer, _ = minilm
    examples = read_mirror("sst2", ["glue/SST-2/train.tsv"], mirror)[:6]
    labels = torch.tensor([int(e.label) for e in examples])
    assert set(labels.tolist()) == {0, 1}
    batch = tokenizer([e.texts[0] for e in examples], padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the batch really has padding
    return dict(batch), labels


@pytest.fixture(scope="module")
def mrpc(mirror):
    return read_mirror("mrpc", ["glue/MRPC/dev.tsv"], mirror)


def make_model(encoder, variant, regression=False, seed=0):
    torch.manual_seed(seed)
    return GlueModel(copy.deepcopy(encoder), num_labels=1 if regression else 2, regression=regression, variant=variant)


def forward(model, batch):
    return model(batch["input_ids"], batch["attention_mask"], batch.get("token_type_ids"))


def sampler(model, batch):
    def sample_hidden():
        with torch.no_grad():
            yield forward(model, batch).hidden_states, batch["attention_mask"]
    return sample_hidden


def objective(model, batch, labels):
    output = forward(model, batch)
    terms = model.regularisation(output, batch["attention_mask"])
    return model.task_loss(output, labels) + sum(terms.values(), torch.zeros(()))


# -- SoftDecay: exact backward on small float64 matrices ---------------------------------------------------
def orthonormal(n, k, seed):
    return torch.linalg.qr(torch.randn(n, k, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)))[0]


def softdecay_map(x, alpha):
    """The layer's full map (SVD map + rescale to s_max) as a function of (X, α), for gradcheck."""
    y, s = SpectralMap.apply(x, alpha, softdecay_positive)
    s_max = s[..., :1]
    return y * (s_max / softdecay_positive(s_max, alpha)).unsqueeze(-1)


def spectra_cases():
    g = torch.Generator().manual_seed(0)
    yield "distinct", torch.randn(2, 5, 8, dtype=torch.float64, generator=g) * 3
    yield "tall", torch.randn(2, 8, 5, dtype=torch.float64, generator=g) * 3
    s = torch.tensor([5.0, 2.0, 2.0, 2.0], dtype=torch.float64)  # a repeated (non-top) singular value
    yield "repeated", (orthonormal(5, 4, 1) * s) @ orthonormal(8, 4, 2).T
    yield "duplicated_rows", (torch.randn(1, 8, dtype=torch.float64, generator=g) * 3).repeat(5, 1)  # s = (a, 0, 0, 0, 0)
    yield "zero_padding", torch.cat([torch.randn(3, 8, dtype=torch.float64, generator=g) * 3,
                                     torch.zeros(3, 8, dtype=torch.float64)])


@pytest.mark.parametrize("case", [name for name, _ in spectra_cases()])
def test_softdecay_backward_is_exact_even_with_repeated_singular_values(case):
    x = dict(spectra_cases())[case].clone().requires_grad_(True)
    alpha = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softdecay_map, (x, alpha), eps=1e-6, atol=1e-5)


def test_softdecay_backward_matches_plain_autograd_where_that_is_stable():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(4, 6, 10, dtype=torch.float64, generator=g).requires_grad_(True)
    alpha = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(4, 6, 10, dtype=torch.float64, generator=g)
    (softdecay_map(x, alpha) * weights).sum().backward()
    x_ref, alpha_ref = x.detach().clone().requires_grad_(True), alpha.detach().clone().requires_grad_(True)
    u, s, vh = torch.linalg.svd(x_ref, full_matrices=False)
    h = softdecay_positive(s, alpha_ref) * (s[..., :1] / softdecay_positive(s[..., :1], alpha_ref))
    (((u * h.unsqueeze(-2)) @ vh) * weights).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-12)
    assert torch.allclose(alpha.grad, alpha_ref.grad, atol=1e-12)


def test_softdecay_layer_transform():
    g = torch.Generator().manual_seed(4)
    x = torch.randn(3, 7, 16, generator=g) * 4
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4])
    layer = SoftDecay(alpha=-0.2).requires_grad_(False)
    out = layer(x, mask)
    for b in range(3):
        real = int(mask[b].sum())
        alone = layer(x[b, :real])  # the per-example transform of the real rows only
        assert torch.allclose(out[b, :real], alone, atol=1e-5)
        assert torch.equal(out[b, real:], x[b, real:])  # padding rows untouched
        s_in = torch.linalg.svdvals(x[b, :real].double())
        s_out = torch.linalg.svdvals(out[b, :real].double())
        assert s_out[0] == pytest.approx(float(s_in[0]), rel=1e-5)  # the largest singular value is kept
        assert (s_out / s_out[0] >= s_in / s_in[0] - 1e-6).all()  # the others are lifted relative to it
        f = softdecay_positive(s_in, torch.tensor(-0.2, dtype=torch.float64))
        assert torch.allclose(s_out, f * s_in[0] / f[0], rtol=1e-5)
    with pytest.raises(ValueError):
        SoftDecay(alpha=0.1)
    layer.alpha.data.fill_(0.5)  # an optimiser step past 0: α in use stays negative
    assert float(layer.effective_alpha()) == pytest.approx(-1e-3)
    assert torch.isfinite(layer(x, mask)).all()


def test_softdecay_domain_is_clamped():
    s = torch.tensor([0.0, 0.1, 0.5, 3.0], dtype=torch.float64)
    f = softdecay_positive(s, torch.tensor(-1.5, dtype=torch.float64))  # 1 − α(s + α) ≤ 0 for small s
    assert torch.isfinite(f).all() and (f >= 0).all() and f[0] == 0 and f[-1] > 0
    assert softdecay_positive(s, torch.tensor(-0.2, dtype=torch.float64))[0] == 0  # f(0) < 0 → 0


# -- SoftDecay in the model, real MiniLM ------------------------------------------------------------------
@pytest.mark.parametrize("placement", ["before_final_norm", "after_final_norm"])
def test_softdecay_gradient_reaches_alpha_on_minilm(minilm, sst2, placement):
    batch, labels = sst2
    model = make_model(minilm[1], {"softdecay": {"alpha": -0.2, "placement": placement}})
    model.train()
    output = forward(model, batch)
    model.task_loss(output, labels).backward()
    grad = model.softdecay.alpha.grad
    assert grad is not None and torch.isfinite(grad) and float(grad) != 0.0
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_softdecay_placements_on_minilm(minilm, sst2):
    batch, _ = sst2
    mask = batch["attention_mask"].bool()
    base = make_model(minilm[1], {}).eval()
    before = make_model(minilm[1], {"softdecay": {"placement": "before_final_norm"}}).eval()
    after = make_model(minilm[1], {"softdecay": {"placement": "after_final_norm"}}).eval()
    norm = base.encoder.encoder.layer[-1].output.LayerNorm
    captured = {}
    handle = norm.register_forward_pre_hook(lambda module, args: captured.update(x=args[0].detach()))
    with torch.no_grad():
        h_base = forward(base, batch).hidden_states
        handle.remove()
        h_before = forward(before, batch).hidden_states
        h_after = forward(after, batch).hidden_states
        expected_before = norm(before.softdecay(captured["x"], batch["attention_mask"]))
        expected_after = after.softdecay(h_base[-1], batch["attention_mask"])
    for h in (h_before, h_after):
        assert len(h) == 7
        for layer in range(6):
            assert torch.equal(h[layer], h_base[layer])  # only the last layer changes
        assert not torch.allclose(h[-1][mask], h_base[-1][mask], atol=1e-3)
    assert torch.allclose(h_before[-1][mask], expected_before[mask], atol=1e-4)  # LN(SoftDecay(LN input))
    assert torch.allclose(h_after[-1][mask], expected_after[mask], atol=1e-4)  # SoftDecay(last hidden state)


def test_softdecay_backward_finite_with_duplicated_token_rows(minilm, sst2):
    batch, _ = sst2
    with torch.no_grad():
        hidden = forward(make_model(minilm[1], {}).eval(), batch).hidden_states[-1]
    real = int(batch["attention_mask"][0].sum())
    x = hidden[0, :real]
    cases = {"stacked": torch.cat([x, x]),  # every singular value doubled in multiplicity: repeated zeros
             "one_token_repeated": x[:1].repeat(real, 1),  # rank one: real − 1 zero singular values
             "equal_singular_values": 10.0 * torch.eye(real, 384)}  # every singular value equal
    layer = SoftDecay(alpha=-0.2)
    for name, matrix in cases.items():
        matrix = matrix.clone().requires_grad_(True)
        layer.zero_grad()
        (layer(matrix) ** 2).sum().backward()
        assert torch.isfinite(matrix.grad).all(), name
        assert torch.isfinite(layer.alpha.grad), name


# -- I-STAR and IsoScore* -------------------------------------------------------------------------------
def test_isoscore_star_equals_isoscore_with_zeta_zero_on_minilm_tokens(minilm, mrpc):
    tokenizer, encoder = minilm
    texts = [text for example in mrpc[:70] for text in example.texts]
    batch = dict(tokenizer(texts, padding=True, truncation=True, max_length=128, return_tensors="pt"))
    model = make_model(encoder, {"istar": {"lambda": 1.0, "zeta": 0.0, "layers": [-1]}}).eval()
    with torch.no_grad():
        output = forward(model, batch)
        terms = model.regularisation(output, batch["attention_mask"])
    points = output.hidden_states[-1][batch["attention_mask"].bool()].double()
    assert len(points) > 8 * points.shape[1]  # N ≫ d
    star = 1.0 - float(terms["istar"])
    assert star == pytest.approx(model.last_regulariser_values["isoscore_star"], rel=1e-5)
    reference = float(isoscore_package.IsoScore(points.numpy()))
    assert star == pytest.approx(reference, rel=1e-5)  # float32 term vs the package in float64
    # the package takes √n in float32 (1e-8 relative); the float64 routes agree to rounding
    float64_star = float(model.istar.isoscore_star(output.hidden_states, batch["attention_mask"]))
    assert float64_star == pytest.approx(reference, rel=1e-6)
    assert float64_star == pytest.approx(isoscore_from_covariance(np.cov(points.numpy().T)), rel=1e-10)  # tokenuni metric


def test_isoscore_torch_is_the_metric_formula_and_differentiable():
    g = torch.Generator().manual_seed(5)
    points = (torch.randn(40, 6, dtype=torch.float64, generator=g)
              * torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.1], dtype=torch.float64)).requires_grad_(True)
    c0 = torch.cov(torch.randn(200, 6, dtype=torch.float64, generator=g).T)

    def star(x):
        return isoscore_from_covariance_torch(0.8 * torch.cov(x.T) + 0.2 * c0)

    assert torch.autograd.gradcheck(star, (points,), eps=1e-6, atol=1e-6)
    reference = float(isoscore_package.IsoScore_star(points.detach().numpy(), c0, 0.2))
    assert float(star(points.detach())) == pytest.approx(reference, rel=1e-6)
    cov = torch.cov(points.detach().T)
    assert float(isoscore_from_covariance_torch(cov)) == pytest.approx(isoscore_from_covariance(cov), rel=1e-12)
    pr = float(torch.trace(cov) ** 2 / (cov ** 2).sum())
    assert float(isoscore_from_covariance_torch(cov)) == pytest.approx((pr - 1) / 5, rel=1e-10)
    lam = torch.ones(6, dtype=torch.float64, requires_grad=True)  # isotropic: gradient still finite
    isoscore_torch(lam).backward()
    assert torch.isfinite(lam.grad).all()


@pytest.mark.parametrize("lambda_", [1.0, -1.0])
def test_istar_sign_is_respected(lambda_):
    g = torch.Generator().manual_seed(6)
    points = (torch.randn(300, 8, generator=g) * torch.linspace(0.3, 3.0, 8)).requires_grad_(True)
    mask = torch.ones(30, 10, dtype=torch.bool)
    istar = IStar(lambda_, zeta=0.2, layers=[-1], c0_tokens=10_000).bind(2)
    istar.rebuild_c0(lambda: iter([((None, points.detach().view(30, 10, 8)), mask)]))
    optimiser = torch.optim.SGD([points], lr=0.5)
    scores = []
    for _ in range(10):
        term, score = istar((None, points.view(30, 10, 8)), mask)
        assert float(term.detach()) == pytest.approx(lambda_ * (1 - float(score)), rel=1e-6)
        scores.append(float(score))
        optimiser.zero_grad()
        term.backward()
        optimiser.step()
    assert (scores[-1] > scores[0]) if lambda_ > 0 else (scores[-1] < scores[0])


def test_istar_c0_is_capped_and_required():
    g = torch.Generator().manual_seed(7)
    batches = [(tuple(torch.randn(4, 6, 5, generator=g) for _ in range(3)), torch.ones(4, 6)) for _ in range(5)]
    istar = IStar(-1.0, zeta=0.2, layers=[-1, -2], c0_tokens=70).bind(3)
    with pytest.raises(RuntimeError, match="start_epoch"):
        istar.isoscore_star(batches[0][0], batches[0][1])
    used = istar.rebuild_c0(lambda: iter(batches))
    # 24 tokens a batch in each of the 2 layers: 24 + 24, then 11 + 11 (the quota), then stop
    assert used == 70
    first = torch.cat([batches[0][0][2].reshape(-1, 5), batches[0][0][1].reshape(-1, 5),
                       batches[1][0][2].reshape(-1, 5)[:11], batches[1][0][1].reshape(-1, 5)[:11]])
    assert torch.allclose(istar.c0, torch.cov(first.double().T), atol=1e-10)
    assert istar.c0_count == len(first)


def test_cosine_regulariser_is_the_mean_pairwise_cosine(minilm, sst2):
    batch, _ = sst2
    model = make_model(minilm[1], {"cosine_regulariser": {"lambda": 0.5, "layers": [-1, 3]}}).eval()
    with torch.no_grad():
        output = forward(model, batch)
        term = model.regularisation(output, batch["attention_mask"])["cosine"]
    mask = batch["attention_mask"].bool()
    brute = []
    for layer in (6, 3):
        x = torch.nn.functional.normalize(output.hidden_states[layer][mask].double(), dim=-1)
        cos = x @ x.T
        n = len(x)
        brute.append(float((cos.sum() - cos.diagonal().sum()) / (n * (n - 1))))
    assert float(term) == pytest.approx(0.5 * np.mean(brute), rel=1e-4)
    assert float(mean_pairwise_cosine(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))) == pytest.approx(
        (0 + 2 * 2 ** -0.5) / 3, rel=1e-6)


# -- fusion ---------------------------------------------------------------------------------------------
def test_resolve_layers():
    assert resolve_layers("all", 7) == [1, 2, 3, 4, 5, 6]
    assert resolve_layers([-1, 0, 2], 7) == [6, 0, 2]
    assert resolve_layers(-2, 7) == [5]
    for bad in ([7], [-8], [1, 1], [], "last", [1.5]):
        with pytest.raises(ValueError):
            resolve_layers(bad, 7)


@pytest.mark.parametrize("kind", ["concat", "max", "gate"])
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_fusion_shapes_and_definitions(kind, pooling):
    g = torch.Generator().manual_seed(8)
    hidden = tuple(torch.randn(3, 5, 16, generator=g) for _ in range(4))
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0], [1, 1, 0, 0, 0]])
    fusion = LayerFusion(kind, [1, 2, 3], 16, pooling)
    out = fusion(hidden, mask)
    assert out.shape == (3, 16)

    def pooled(h):
        if pooling == "cls":
            return h[:, 0]
        m = mask.unsqueeze(-1).float()
        return (h * m).sum(1) / m.sum(1)

    if kind == "max":
        assert torch.equal(out, torch.maximum(torch.maximum(pooled(hidden[1]), pooled(hidden[2])), pooled(hidden[3])))
    if kind == "gate":  # zero-initialised gates: the plain average of the layers
        assert torch.allclose(out, pooled((hidden[1] + hidden[2] + hidden[3]) / 3), atol=1e-6)
    if kind == "concat":
        assert fusion.projection.in_features == 48 and out.abs().max() < 1


def test_gradients_reach_the_gate_weights_on_minilm(minilm, sst2):
    batch, labels = sst2
    model = make_model(minilm[1], {"fusion": {"kind": "gate", "layers": "all"}})
    model.train()
    output = forward(model, batch)
    assert output.pooled.shape == (6, 384) and output.logits.shape == (6, 2)
    model.task_loss(output, labels).backward()
    assert len(model.fusion.gates) == 6
    for gate in model.fusion.gates:
        assert torch.isfinite(gate.weight.grad).all() and gate.weight.grad.abs().sum() > 0
    weights = model.fusion.gate_weights(output.hidden_states)
    assert weights.shape == (6, batch["input_ids"].shape[1], 6)
    assert torch.allclose(weights.sum(-1), torch.ones(weights.shape[:-1]))


# -- the model ------------------------------------------------------------------------------------------
def test_regression_head_on_mrpc_pairs(minilm, mrpc):
    tokenizer, encoder = minilm
    pairs = mrpc[:4]
    batch = dict(tokenizer([p.texts[0] for p in pairs], [p.texts[1] for p in pairs], padding=True,
                           return_tensors="pt"))
    assert (batch["token_type_ids"] == 1).any()
    model = make_model(encoder, {"pooling": "mean"}, regression=True)
    output = forward(model, batch)
    assert output.logits.shape == (4,) and output.pooled.shape == (4, 384)
    assert len(output.hidden_states) == 7 and output.hidden_states[0].dtype == torch.float32
    loss = model.task_loss(output, torch.tensor([float(p.label) for p in pairs]))
    loss.backward()
    assert torch.isfinite(loss) and model.head.weight.grad.shape == (1, 384)
    assert model.regularisation(output, batch["attention_mask"]) == {}


def test_parameter_groups_and_variant_validation(minilm):
    encoder = minilm[1]
    model = make_model(encoder, VARIANTS["softdecay_before"])
    groups = {g["name"]: g for g in model.parameter_groups(2e-5, 0.01)}
    assert set(groups) == {"decay", "no_decay", "softdecay_alpha"}
    assert groups["softdecay_alpha"]["params"] == [model.softdecay.alpha]
    assert groups["softdecay_alpha"]["lr"] == 1e-3 and groups["softdecay_alpha"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == 2e-5 and groups["decay"]["weight_decay"] == 0.01
    assert all(p.ndim < 2 for p in groups["no_decay"]["params"])
    grouped = {id(p) for g in groups.values() for p in g["params"]}
    named = {name for name, p in model.named_parameters() if id(p) in grouped}
    assert not any(name.startswith("encoder.pooler.") for name in named)
    assert len(grouped) == sum(len(g["params"]) for g in groups.values())  # no parameter twice
    frozen = make_model(encoder, {"softdecay": {"trainable": False}})
    assert "softdecay_alpha" not in {g["name"] for g in frozen.parameter_groups(2e-5, 0.01)}
    assert make_model(encoder, {}).alpha is None
    for bad in ({"softdeacy": {}}, {"softdecay": {"alpha": -0.2, "placment": "x"}},
                {"softdecay": {"placement": "inside"}}, {"fusion": {"kind": "sum"}}, {"pooling": "max"},
                {"istar": {"zeta": 0.2}}, {"istar": {"lambda": 1.0, "zeta": 2.0}}, {"fusion": {"kind": "max", "layers": [9]}}):
        with pytest.raises(ValueError):
            make_model(encoder, bad)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_every_variant_trains_on_a_fixed_batch(minilm, sst2, name):
    """Forward + backward run, gradients are finite, and 15 AdamW steps lower the objective (task + terms)."""
    batch, labels = sst2
    model = make_model(minilm[1], VARIANTS[name])
    model.encoder.embeddings.word_embeddings.weight.requires_grad_(False)  # speed: the dense AdamW update of 30k × 384
    model.eval()
    model.start_epoch(sampler(model, batch))
    with torch.no_grad():
        before = float(objective(model, batch, labels))
    optimiser = torch.optim.AdamW(model.parameter_groups(1e-4, 0.01))
    model.train()
    for step in range(15):
        optimiser.zero_grad()
        loss = objective(model, batch, labels)
        loss.backward()
        if step == 0:
            assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimiser.step()
    model.eval()
    with torch.no_grad():
        after = float(objective(model, batch, labels))
    assert np.isfinite(after) and after < before - 0.05, (before, after)
    if model.istar is not None:
        assert 0 < model.last_regulariser_values["isoscore_star"] < 1
    if model.softdecay is not None:
        assert model.alpha < 0 and model.alpha != pytest.approx(-0.2, abs=1e-6)  # α moved
