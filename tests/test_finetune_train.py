"""The fine-tuning loop on the real all-MiniLM-L6-v2 and tiny real GLUE subsets (CPU, float32)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from conftest import MINILM  # noqa: E402
from tokenuni.finetune.model import GlueModel  # noqa: E402
from tokenuni.finetune.train import (  # noqa: E402
    Encoded, finetune, linear_schedule, make_batches, predict, resolve_precision, set_seed)
from tokenuni.glue import load_task  # noqa: E402

BASELINE = {"softdecay": None, "istar": None, "cosine_regulariser": None, "fusion": None, "pooling": "cls"}
COSINE = dict(BASELINE, cosine_regulariser={"lambda": 0.1, "layers": [-1]})
EVERYTHING = dict(BASELINE, softdecay={"alpha": -0.2, "trainable": True, "lr": 1e-3, "placement": "before_final_norm"},
                  istar={"lambda": -1.0, "zeta": 0.2, "layers": [-1], "c0_tokens": 3000},
                  fusion={"kind": "gate", "layers": [-1, -2, -3]})
STANDARD_KEYS = {"train/loss", "train/task_loss", "train/lr", "train/grad_norm"}


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def minilm():
    from tokenuni.embed import load_model

    return load_model(MINILM, "cpu")


@pytest.fixture(scope="module")
def sst2(mirror):
    return load_task("sst2", "train", mirror, max_examples=64, seed=0), load_task("sst2", "dev", mirror,
                                                                                   max_examples=32, seed=0)


def make_model(minilm, variant=BASELINE, num_labels=2, regression=False, seed=0):
    set_seed(seed)  # the head is initialised here
    return GlueModel(copy.deepcopy(minilm[1]), num_labels=num_labels, regression=regression, variant=variant)


def _record_start_epoch(model, calls):
    """Wrap ``model.start_epoch``: consume two batches of ``sample_hidden`` and record what they look like."""
    original = model.start_epoch

    def start_epoch(sample_hidden):
        seen = []
        for i, (hidden, mask) in enumerate(sample_hidden()):
            seen.append({"layers": len(hidden), "shape": tuple(hidden[-1].shape), "mask": tuple(mask.shape),
                         "grad": any(h.requires_grad for h in hidden), "training": model.training})
            if i == 1:
                break
        calls.append(seen)
        original(sample_hidden)

    model.start_epoch = start_epoch


def test_finetune_runs_logs_curves_and_returns_metrics(minilm, sst2):
    train, dev = sst2
    model = make_model(minilm)
    calls, logged = [], []
    _record_start_epoch(model, calls)
    summary = finetune(model, minilm[0], "sst2", train, dev, epochs=1, lr=5e-5, batch_size=16, max_length=64,
                       seed=0, device="cpu", log=lambda k, v, s: logged.append((k, v, s)), log_every=1,
                       eval_every=2, progress=False)
    # 64 examples / 16 = 4 steps; dev evaluated at step 2 (eval_every) and at the end of the epoch
    assert summary["steps"] == summary["steps_per_epoch"] == 4 and summary["warmup_steps"] == 1
    assert summary["train_examples"] == 64 and summary["dev_examples"] == 32
    keys = {k for k, _, _ in logged}
    assert STANDARD_KEYS | {"dev/accuracy", "dev/loss"} <= keys
    assert [s for k, _, s in logged if k == "train/loss"] == [1, 2, 3, 4]
    assert [s for k, _, s in logged if k == "dev/accuracy"] == [2, 4]
    assert summary["curve_lengths"]["train/loss"] == 4 and summary["curve_lengths"]["dev/accuracy"] == 2
    assert summary["curves"]["train/loss"] == [[s, v] for k, v, s in logged if k == "train/loss"]
    lrs = [v for k, v, _ in logged if k == "train/lr"]  # rate used by each step: warm-up 1 step, linear decay to 0
    assert lrs == pytest.approx([0.0, 5e-5, 5e-5 * 2 / 3, 5e-5 / 3])
    assert 0.0 <= summary["dev"]["accuracy"] <= 1.0 and summary["main"] == summary["dev"]["accuracy"]
    assert summary["main_metric"] == "accuracy" and np.isfinite(summary["dev"]["loss"])
    assert np.isfinite(summary["final_loss"]) and summary["skipped_steps"] == 0
    assert summary["precision"] == "fp32" and summary["device"] == "cpu"
    assert len(summary["seconds_per_epoch"]) == 1 and summary["tokens"] > 64 * 3
    assert summary["tokens_per_second"] > 0 and summary["seconds"] >= summary["train_seconds"]
    assert summary["best_dev"]["step"] in (2, 4)
    # the epoch hook ran once, on no-grad hidden states of every layer, in eval mode
    assert len(calls) == 1 and len(calls[0]) == 2
    first = calls[0][0]
    assert first["layers"] == 7 and first["shape"][0] == 16 and first["shape"][2] == 384
    assert not first["grad"] and not first["training"]
    assert model.training  # train mode restored after the hook


def test_finetune_is_deterministic_and_logs_regulariser_terms(minilm, sst2):
    train, dev = sst2
    runs = []
    for _ in range(2):
        model = make_model(minilm, COSINE)
        logged = []
        runs.append((finetune(model, minilm[0], "sst2", train, dev, epochs=1, lr=5e-5, batch_size=16,
                              max_length=64, seed=7, device="cpu", log=lambda k, v, s, into=logged: into.append((k, v, s)),
                              log_every=2, progress=False), logged))
    (a, log_a), (b, log_b) = runs
    unweighted = {f"train/{k}" for k in model.last_regulariser_values}  # e.g. mean_cosine (not part of the loss)
    assert a["final_loss"] == pytest.approx(b["final_loss"], abs=1e-6)
    assert a["dev"] == pytest.approx(b["dev"], abs=1e-6)
    assert [(k, s) for k, _, s in log_a] == [(k, s) for k, _, s in log_b]
    np.testing.assert_allclose([v for _, v, _ in log_a], [v for _, v, _ in log_b], atol=1e-6)
    terms = {k for k, _, _ in log_a if k.startswith("train/")} - STANDARD_KEYS
    assert terms, "a variant with a regulariser logs its term(s) as train/<name>"
    for term in terms:
        values = [v for k, v, _ in log_a if k == term]
        assert len(values) == 2 and all(np.isfinite(values))
    # total loss = task loss + the terms (averaged over the same steps)
    total = np.array([v for k, v, _ in log_a if k == "train/loss"])
    parts = np.array([v for k, v, _ in log_a if k == "train/task_loss"])
    assert terms - unweighted
    for term in terms - unweighted:
        parts = parts + np.array([v for k, v, _ in log_a if k == term])
    np.testing.assert_allclose(total, parts, rtol=1e-5)


def test_loss_decreases_on_a_fixed_batch(minilm, mirror):
    train = load_task("sst2", "train", mirror, max_examples=16, seed=1)
    dev = (train[0][:8], None, train[2][:8])
    model = make_model(minilm)
    summary = finetune(model, minilm[0], "sst2", train, dev, epochs=20, lr=1e-4, batch_size=16, max_length=64,
                       warmup_ratio=0.0, seed=0, device="cpu", log_every=1, progress=False)
    losses = [v for _, v in summary["curves"]["train/loss"]]
    assert len(losses) == summary["steps"] == 20
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:3]), losses


def test_finetune_every_repair_together(minilm, sst2):
    """SoftDecay (trainable α, own lr) + I-STAR (C0 rebuilt each epoch by the hook) + gated fusion."""
    train, dev = sst2
    small, dev_small = (train[0][:32], None, train[2][:32]), (dev[0][:16], None, dev[2][:16])
    model = make_model(minilm, EVERYTHING)
    summary = finetune(model, minilm[0], "sst2", small, dev_small, epochs=2, lr=5e-5, batch_size=16, max_length=64,
                       seed=0, device="cpu", log_every=1, progress=False)
    assert summary["steps"] == 4 and summary["skipped_steps"] == 0
    for key in ("train/istar", "train/isoscore_star", "train/softdecay_alpha"):
        assert summary["curve_lengths"][key] == 4, key
    scores = [v for _, v in summary["curves"]["train/isoscore_star"]]
    assert all(0 <= v <= 1 for v in scores)
    assert model.istar.c0 is not None and 0 < model.istar.c0_count <= 3000  # built from sample_hidden
    alphas = [v for _, v in summary["curves"]["train/softdecay_alpha"]]
    assert alphas[-1] != alphas[0] and all(a < 0 for a in alphas)  # α trains
    np.testing.assert_allclose([v for _, v in summary["curves"]["train/loss"]],
                               [t + r for (_, t), (_, r) in zip(summary["curves"]["train/task_loss"],
                                                                summary["curves"]["train/istar"])], rtol=1e-5)


def test_non_finite_steps_are_skipped_then_fatal(minilm, sst2):
    train, dev = sst2
    small = tuple(x[:32] for x in train[:1]) + (None, train[2][:32])
    model = make_model(minilm)
    calls = []

    def regularisation(output, attention_mask):
        calls.append(1)
        return {"bad": torch.tensor(float("nan") if len(calls) == 1 else 0.0)}

    model.regularisation = regularisation
    summary = finetune(model, minilm[0], "sst2", small, (dev[0][:8], None, dev[2][:8]), epochs=1, lr=5e-5,
                       batch_size=16, max_length=64, seed=0, device="cpu", log_every=1, progress=False)
    assert summary["steps"] == 2 and summary["skipped_steps"] == 1 and np.isfinite(summary["final_loss"])
    assert summary["curve_lengths"]["train/loss"] == 1  # the skipped step logs no loss
    model.regularisation = lambda output, attention_mask: {"bad": torch.tensor(float("inf"))}
    with pytest.raises(FloatingPointError, match="consecutive non-finite"):
        finetune(model, minilm[0], "sst2", small, (dev[0][:8], None, dev[2][:8]), epochs=1, lr=5e-5,
                 batch_size=1, max_length=16, seed=0, device="cpu", progress=False)


def test_regression_with_gradient_accumulation(minilm, mirror):
    train = load_task("stsb", "train", mirror, max_examples=32, seed=0)
    dev = load_task("stsb", "dev", mirror, max_examples=16, seed=0)
    model = make_model(minilm, num_labels=1, regression=True)
    summary = finetune(model, minilm[0], "stsb", train, dev, epochs=1, lr=5e-5, batch_size=8, max_length=64,
                       grad_accumulation=2, seed=0, device="cpu", log_every=1, progress=False,
                       group_by_length=True)
    assert summary["steps"] == 2 and summary["effective_batch_size"] == 16
    assert set(summary["dev"]) == {"pearson", "spearman", "pearson_spearman_mean", "loss"}
    assert -1 <= summary["dev"]["pearson"] <= 1 and summary["main_metric"] == "pearson_spearman_mean"
    assert np.isfinite(summary["final_loss"])


def test_predict_is_order_and_batch_invariant(minilm, mirror):
    a, b, _ = load_task("mrpc", "dev", mirror, max_examples=12, seed=0)
    model = make_model(minilm)
    model.train()
    small = predict(model, minilm[0], a, b, batch_size=3, max_length=64, device="cpu", return_logits=True)
    large = predict(model, minilm[0], a, b, batch_size=32, max_length=64, device="cpu", return_logits=True)
    assert model.training  # mode restored
    assert small.shape == (12, 2)
    np.testing.assert_allclose(small, large, atol=2e-5)  # padding does not leak into the prediction
    model.eval()
    tokens = minilm[0](a[5], b[5], truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        single = model(**tokens).logits.numpy()[0]
    np.testing.assert_allclose(small[5], single, atol=2e-5)  # input order restored
    classes = predict(model, minilm[0], a, b, batch_size=5, max_length=64, device="cpu")
    assert classes.tolist() == small.argmax(1).tolist()


def test_batches_schedule_and_precision():
    lengths = np.random.default_rng(0).integers(3, 60, size=103)
    for grouped in (False, True):
        batches = make_batches(lengths, 8, np.random.default_rng(1), grouped)
        assert sorted(np.concatenate(batches).tolist()) == list(range(103))
        assert len(batches) == 13 and sorted(len(x) for x in batches)[0] == 7
        again = make_batches(lengths, 8, np.random.default_rng(1), grouped)
        assert all(np.array_equal(x, y) for x, y in zip(batches, again))
    padded = {g: sum(len(x) * lengths[x].max() for x in make_batches(lengths, 8, np.random.default_rng(1), g))
              for g in (False, True)}
    assert padded[True] < padded[False]
    factor = linear_schedule(2, 10)
    assert [factor(s) for s in (0, 1, 2, 6, 10)] == pytest.approx([0, 0.5, 1, 0.5, 0])
    assert resolve_precision("auto", "cpu") == resolve_precision("bf16", "cpu") == "fp32"
    with pytest.raises(ValueError):
        resolve_precision("fp8", "cpu")


def test_dynamic_padding(minilm):
    tokenizer = minilm[0]
    encoded = Encoded(tokenizer, ["a short one", "a much longer sentence than the first one is"], ["x", "y z"],
                      [0, 1], max_length=8)
    assert encoded.lengths.max() == 8  # truncated to max_length
    batch = encoded.batch([0], "cpu")
    assert batch["input_ids"].shape == (1, encoded.lengths[0]) and batch["attention_mask"].all()
    batch = encoded.batch([1, 0], "cpu")
    assert batch["input_ids"].shape == (2, 8) and batch["labels"].tolist() == [1, 0]
    assert batch["attention_mask"][1].sum() == encoded.lengths[0]
    assert (batch["input_ids"][1, encoded.lengths[0]:] == tokenizer.pad_token_id).all()
    assert batch["token_type_ids"][0].max() == 1  # second sentence segment


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_finetune_mixed_precision_on_cuda(minilm, sst2):
    train, dev = sst2
    for precision in ("bf16", "fp16"):
        model = make_model(minilm, COSINE)
        summary = finetune(model, minilm[0], "sst2", train, dev, epochs=1, lr=5e-5, batch_size=16, max_length=64,
                           seed=0, device="cuda", precision=precision, log_every=1, progress=False)
        assert summary["precision"] == precision and summary["device"].startswith("cuda")
        assert np.isfinite(summary["final_loss"]) and 0 <= summary["dev"]["accuracy"] <= 1


def test_final_evaluation_gives_its_logits_and_hidden_states_for_the_geometry(minilm, sst2):
    """The dev logits returned are the final evaluation's (equal to predict() afterwards), and DevStates keeps
    exactly the real tokens of its seeded dev subset from that same forward pass."""
    from tokenuni.finetune.job import DevStates
    from tokenuni.store import open_dump

    tokenizer = minilm[0]
    model = make_model(minilm)
    train = Encoded(tokenizer, *sst2[0], 64)
    dev = Encoded(tokenizer, *sst2[1], 64)
    states = DevStates(dev, model_key="minilm", task="sst2", max_sentences=10, seed=0)
    try:
        summary = finetune(model, tokenizer, "sst2", train, dev, epochs=1, lr=5e-5, batch_size=16, max_length=64,
                           seed=0, device="cpu", progress=False, on_final_dev_batch=states)
        logits = predict(model, tokenizer, sst2[1][0], None, batch_size=16, max_length=64, device="cpu",
                         return_logits=True)
        np.testing.assert_allclose(summary["dev_logits"], logits, rtol=1e-5, atol=1e-5)
        assert summary["main"] == pytest.approx(float((logits.argmax(1) == sst2[1][2]).mean()))
        assert summary["train_cpu_seconds"] > 0 and summary["eval_cpu_seconds"] > 0
        geometry = states.metrics(["isoscore"], "cpu")
        kept = np.flatnonzero(states.keep)
        assert states.sentences == len(kept) == 10
        dump = open_dump(states.path)
        tokens = dump.read_index()
        assert sorted(set(tokens["sentence_id"].to_pylist())) == kept.tolist()
        assert len(tokens) == int(dev.lengths[kept].sum())  # every real token of the kept examples, no padding
        assert sorted(set(geometry["layer"])) == list(range(7))
    finally:
        states.close()
