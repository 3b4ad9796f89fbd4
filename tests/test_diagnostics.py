"""Diagnostics: each measure on a constructed case with a known answer, then `analyze` end to end.

The end-to-end run trains a tiny random Llama with LoRA for two steps (as tests/test_train.py does) and
analyses it with 4 probe items per probe and a 3-iteration Hessian power iteration.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
from helpers import tiny_train_config

from tinyslm.cli import main
from tinyslm.core.errors import UserError
from tinyslm.core.textstats import arithmetic_errors, find_equations
from tinyslm.diagnostics import HVP_DEFAULTS, MEASURES, analyze, parse_measures, summarize
from tinyslm.diagnostics.displacement import relative_displacement, weight_displacement
from tinyslm.diagnostics.forgetting import (
    MCItem,
    compare,
    continuation_logprobs,
    load_mmlu,
    requests_for,
    score_items,
    stratified_items,
)
from tinyslm.diagnostics.grad_spikes import find_spikes, grad_norm_spikes
from tinyslm.diagnostics.intruders import intruder_count, intruder_dimensions, top_left_singular_vectors
from tinyslm.diagnostics.outputs import arithmetic_error_rate, repetition_rate
from tinyslm.diagnostics.sharpness import (
    hessian_vector_product,
    loss_terms,
    model_sharpness,
    split_batch,
    top_hessian_eigenvalue,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------------
# Arithmetic in model outputs.


@pytest.mark.parametrize(
    "text, written, verdict",
    [
        ("Natalia sold 48/2 = 24 clips in May.", "48/2 = 24", "true"),
        ("Natalia sold 48/2 = 25 clips in May.", "48/2 = 25", "false"),
        ("He pays $1,200 / 4 = $300 a month.", "$1,200 / 4 = $300", "true"),
        ("Total: $1,200 + $300 = $1,600.", "$1,200 + $300 = $1,600", "false"),
        ("It costs 3.5 * 2 = 7 dollars.", "3.5 * 2 = 7", "true"),
        ("It costs 3.5 * 2 = 7.5 dollars.", "3.5 * 2 = 7.5", "false"),
        ("She earns 12 x 5 = 60.", "12 x 5 = 60", "true"),
        ("So 6 ÷ 4 = 1.5 and", "6 ÷ 4 = 1.5", "true"),
        ("So 7 × 8 = 54.", "7 × 8 = 54", "false"),
        ("A discount of 25% * 80 = 20 dollars", "25% * 80 = 20", "true"),
        ("that is 0.25 * 100 = 25%", "0.25 * 100 = 25%", "true"),
        ("each gets 10/3 = 3.33 cups", "10/3 = 3.33", "rounded"),
        ("each gets 7/2 = 3 cups", "7/2 = 3", "false"),
        ("balance 5 - 8 = -3", "5 - 8 = -3", "true"),
    ],
)
def test_equation_verdicts(text, written, verdict):
    (eq,) = find_equations(text)
    assert (eq.text, eq.verdict) == (written, verdict)
    assert (arithmetic_errors(text) == [eq]) == (verdict == "false")


def test_gsm8k_calculator_annotations_are_checked_exactly():
    text = "She bakes 4*5=<<4*5=20>>20 cakes and 20+3=<<20+3=24>>24 pies.\n#### 24"
    eqs = find_equations(text)
    assert [(e.text, e.verdict) for e in eqs] == [("4*5=20", "true"), ("20+3=24", "false")]
    assert (eqs[1].a, eqs[1].op, eqs[1].b, eqs[1].c) == (20, "+", 3, 24)
    assert find_equations("3.5 + 0.25 = 3.75")[0].c == Fraction(15, 4)  # exact, no float rounding


@pytest.mark.parametrize(
    "text",
    [
        "2 + 3 + 4 = 9",  # a chain: "3 + 4 = 9" is not what was claimed
        "20 - 10 - 3 = 7",
        "2*3 = 6 + 1",  # the right side goes on
        "x = 3/4 = 0.75 / 1",
        "2x + 3 = 7",  # a variable, not multiplication
        "50 + 10% = 55",  # percentage shorthand, ambiguous
        "No arithmetic here. #### 5",
    ],
)
def test_what_is_not_judged(text):
    assert arithmetic_errors(text) == []
    assert all(e.text != "3 + 4 = 9" for e in find_equations(text))


def test_output_rates_per_benchmark_and_overall():
    outputs = {
        "gsm8k": ["2 + 2 = 5. #### 5", "3 * 3 = 9 and 9 - 1 = 8. #### 8", "go go go go go"],
        "svamp": ["no equation", "10 / 4 = 2.5"],
    }
    arith = arithmetic_error_rate(outputs)
    assert arith["by_benchmark"]["gsm8k"]["equations"] == 3 and arith["by_benchmark"]["gsm8k"]["false"] == 1
    assert arith["by_benchmark"]["gsm8k"]["examples"] == ["2 + 2 = 5"]
    assert arith["overall"]["equations"] == 4 and arith["overall"]["rate"] == pytest.approx(0.25)
    rep = repetition_rate(outputs)
    assert rep["by_benchmark"]["gsm8k"]["with_loop"] == 1 and rep["overall"]["rate"] == pytest.approx(1 / 5)
    assert repetition_rate({})["overall"]["rate"] is None


# ---------------------------------------------------------------------------------------------------
# Weight measures.


def _orthogonal(n: int, seed: int):
    import torch

    q, _ = torch.linalg.qr(
        torch.randn(n, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    )
    return q


def test_displacement_of_a_known_delta():
    import torch

    w = torch.zeros(4, 3)
    w[0, 0], w[1, 1] = 3.0, 4.0  # ||W||_F = 5
    delta = torch.zeros(4, 3)
    delta[2, 2] = 0.5
    assert relative_displacement(w, w + delta) == pytest.approx(0.1)
    base = {
        "model.layers.0.self_attn.q_proj.weight": w,
        "model.layers.1.self_attn.q_proj.weight": w,
        "model.layers.0.mlp.up_proj.weight": w,
    }
    tuned = {
        "model.layers.0.self_attn.q_proj.weight": w + delta,
        "model.layers.1.self_attn.q_proj.weight": w + 3 * delta,
        "model.layers.0.mlp.up_proj.weight": w,
    }
    d = weight_displacement(base, tuned)
    assert d["by_module"]["q_proj"] == {
        "n": 2,
        "mean": pytest.approx(0.2),
        "median": pytest.approx(0.2),
        "max": pytest.approx(0.3),
    }
    assert d["by_module"]["up_proj"]["max"] == 0.0
    assert d["matrices"][1]["layer"] == 1 and d["matrices"][1]["module"] == "q_proj"


def test_top_singular_vectors_match_a_full_svd():
    import torch

    for shape in ((20, 50), (50, 20)):
        w = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        s, u = top_left_singular_vectors(w, 5)
        full = torch.linalg.svd(w, full_matrices=False)
        assert torch.allclose(s, full.S[:5], atol=1e-8)
        assert torch.allclose((u * full.U[:, :5]).sum(0).abs(), torch.ones(5, dtype=torch.float64), atol=1e-8)


def test_planted_rotation_gives_intruders_and_a_small_perturbation_none():
    import torch

    n = 64
    u, v = _orthogonal(n, 0), _orthogonal(n, 1)
    s = torch.linspace(10, 1, n, dtype=torch.float64)
    base = u @ torch.diag(s) @ v.T
    # A new top direction spread evenly over 8 base singular vectors: |cos| = 1/sqrt(8) ~ 0.35 with each.
    y = u[:, 10:18].sum(1) / 8**0.5
    tuned = base + 30.0 * torch.outer(y, v[:, 0])
    count, best = intruder_count(base, tuned)
    assert count == 1 and min(best) == pytest.approx(8**-0.5, abs=0.05)
    # Rotating the top two singular vectors into each other a little keeps them close to the base ones.
    c, sn = 0.95, (1 - 0.95**2) ** 0.5
    u_rot = u.clone()
    u_rot[:, 0], u_rot[:, 1] = c * u[:, 0] + sn * u[:, 1], -sn * u[:, 0] + c * u[:, 1]
    assert intruder_count(base, u_rot @ torch.diag(s) @ v.T)[0] == 0
    noise = torch.randn(n, n, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    assert intruder_count(base, base + 1e-3 * noise)[0] == 0
    out = intruder_dimensions(
        {"model.layers.0.mlp.down_proj.weight": base}, {"model.layers.0.mlp.down_proj.weight": tuned}
    )
    assert out["total"] == 1 and out["by_module"]["down_proj"] == {
        "matrices": 1,
        "intruders": 1,
        "with_intruders": 1,
    }


# ---------------------------------------------------------------------------------------------------
# Sharpness: Hessian-vector-product power iteration.


def _quadratic(eigenvalues: list[float], seed: int = 0):
    """loss(x) = ½ xᵀHx + bᵀx with H = Q diag(eigenvalues) Qᵀ, over parameters split into two tensors."""
    import torch

    g = torch.Generator().manual_seed(seed)
    n = len(eigenvalues)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    hessian = q @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ q.T
    b = torch.randn(n, generator=g, dtype=torch.float64)
    p1 = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    p2 = torch.ones(n - 2, dtype=torch.float64, requires_grad=True)

    def loss():
        x = torch.cat([p1, p2])
        return 0.5 * x @ hessian @ x + b @ x

    return loss, [p1, p2]


def test_power_iteration_finds_the_top_eigenvalue_of_a_quadratic():
    loss, params = _quadratic([7.0, 3.0, 2.0, 1.0, -0.5, 0.1])
    out = top_hessian_eigenvalue(loss, params, iters=200, tol=1e-10)
    assert out["eigenvalue"] == pytest.approx(7.0, rel=1e-6)
    assert out["converged"] and out["iterations"] == len(out["dominant"]["history"]) < 200
    assert out["shifted"] is None  # a positive dominant eigenvalue is already the top one


@pytest.mark.parametrize(
    "eigenvalues, top, dominant",
    [
        ([3.0, -7.0, 1.0, 0.5, -1.0], 3.0, -7.0),  # the largest magnitude is negative
        ([5.0, -5.0, 1.0, 0.2], 5.0, None),  # a ± pair, as a LoRA adapter at B = 0 has: no dominant one
    ],
)
def test_shifted_power_iteration_finds_the_most_positive_eigenvalue(eigenvalues, top, dominant):
    loss, params = _quadratic(eigenvalues, seed=3)
    out = top_hessian_eigenvalue(loss, params, iters=500, tol=1e-10)
    assert out["eigenvalue"] == pytest.approx(top, rel=1e-5) and out["converged"]
    assert out["shift"] == pytest.approx(max(abs(e) for e in eigenvalues), rel=1e-3)
    if dominant is not None:
        assert out["dominant"]["eigenvalue"] == pytest.approx(dominant, rel=1e-5)


def test_an_unresolved_top_eigenvalue_is_reported_as_not_converged():
    # λmax = 0.01 next to 0.0001, both under a -10: the shifted spectrum 10.01 vs 10.0001 cannot be separated.
    loss, params = _quadratic([0.01, -10.0, -9.0, 1e-4], seed=3)
    out = top_hessian_eigenvalue(loss, params, iters=50, tol=1e-3)
    assert not out["converged"] and out["shift"] == pytest.approx(10.0, rel=1e-2)


def test_power_iteration_on_a_module_and_its_budget():
    import torch

    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 1, bias=False)
    x = torch.randn(16, 3)
    # loss = mean((x w)^2): Hessian 2 xᵀx / n, whose top eigenvalue is known in closed form.
    expected = torch.linalg.eigvalsh(2 * x.T @ x / len(x)).max().item()
    out = top_hessian_eigenvalue(lambda: lin(x).pow(2).mean(), list(lin.parameters()), iters=100, tol=1e-8)
    assert out["eigenvalue"] == pytest.approx(expected, rel=1e-4)
    short = top_hessian_eigenvalue(lambda: lin(x).pow(2).mean(), list(lin.parameters()), iters=2, tol=1e-12)
    assert short["dominant"]["iterations"] == 2 and not short["converged"]


def test_power_iteration_reports_every_iteration_with_its_estimate():
    loss, params = _quadratic([3.0, -7.0, 1.0, 0.5, -1.0], seed=3)
    lines: list[str] = []
    out = top_hessian_eigenvalue(loss, params, iters=30, tol=1e-6, progress=lines.append)
    history = out["dominant"]["history"] + out["shifted"]["history"]
    assert len(lines) == out["iterations"] == len(history)
    assert lines[0].startswith("dominant iteration 1/30: λ ≈ ") and lines[-1].startswith("shifted iteration ")
    assert f"{history[-1]:.6g}" in lines[-1]


def test_summed_loss_terms_give_the_hessian_of_the_sum():
    import torch

    loss, params = _quadratic([4.0, 2.0, -1.0, 0.5])
    v = [torch.ones_like(p) for p in params]
    whole, whole_loss = hessian_vector_product(loss, params)
    parts, parts_loss = hessian_vector_product([lambda: 0.25 * loss(), lambda: 0.75 * loss()], params)
    for a, b in zip(whole(v), parts(v), strict=True):
        assert a.allclose(b, rtol=1e-12)
    assert parts_loss() == pytest.approx(whole_loss(), rel=1e-12)


@pytest.fixture(scope="module")
def tiny_eager(tiny_model_dir):
    import torch

    from tinyslm.models.load import load_model

    model, _ = load_model(str(tiny_model_dir), dtype=torch.float32)
    model.set_attn_implementation("eager")  # differentiable twice
    model.eval()
    return model


def _uneven_batch(vocab: int) -> dict:
    """Four right-padded rows of different lengths with 1 to 9 target tokens: micro-batch means would differ."""
    import torch

    from tinyslm.data.training import IGNORE_INDEX, EncodedExample, collate

    g = torch.Generator().manual_seed(5)
    rows = []
    for i, (n_prompt, n_target) in enumerate([(6, 9), (3, 1), (10, 4), (2, 7)]):
        ids = torch.randint(3, vocab, (n_prompt + n_target,), generator=g).tolist()
        rows.append(EncodedExample(str(i), ids, [IGNORE_INDEX] * n_prompt + ids[n_prompt:], False))
    return collate(rows, 0)


def test_micro_batched_hvp_equals_the_full_batch_hvp(tiny_eager):
    import torch
    import torch.nn.functional as F

    model = tiny_eager
    batch = _uneven_batch(model.config.vocab_size)
    params = [p for n, p in model.named_parameters() if ".layers." in n]
    g = torch.Generator().manual_seed(0)
    v = [torch.randn(p.shape, generator=g) for p in params]

    def reference_loss():  # the mean over all target tokens, from the full logits, written out independently
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1]
        return F.cross_entropy(logits.flatten(0, 1), batch["labels"][:, 1:].flatten(), ignore_index=-100)

    with torch.enable_grad():
        want_loss = reference_loss()
        grads = torch.autograd.grad(want_loss, params, create_graph=True)
        want = torch.autograd.grad(grads, params, grad_outputs=v)
        scale = torch.sqrt(sum((w**2).sum() for w in want))
        for micro in (None, 1, 3):
            terms = loss_terms(model, batch, micro)
            assert len(terms) == (1 if micro is None else -(-4 // micro))
            hvp, loss = hessian_vector_product(terms, params)
            got = hvp(v)
            err = torch.sqrt(sum(((a - b) ** 2).sum() for a, b in zip(got, want, strict=True)))
            assert err <= 1e-5 * scale, (micro, float(err / scale))
            assert loss() == pytest.approx(float(want_loss.detach()), rel=1e-5)


def test_micro_batches_are_cut_to_their_longest_row_and_change_no_eigenvalue(tiny_eager):
    batch = _uneven_batch(tiny_eager.config.vocab_size)
    parts = split_batch(batch, 2)
    assert [tuple(p["input_ids"].shape) for p in parts] == [(2, 15), (2, 14)]
    assert (parts[1]["labels"] == batch["labels"][2:, :14]).all()
    params = [p for n, p in tiny_eager.named_parameters() if "layers.1.mlp" in n]
    whole = model_sharpness(tiny_eager, batch, iters=6, tol=1e-9, seed=0, params=params)
    split = model_sharpness(tiny_eager, batch, iters=6, tol=1e-9, seed=0, params=params, micro_batch_size=1)
    assert (whole["micro_batches"], split["micro_batches"]) == (1, 4)
    assert split["dominant"]["history"] == pytest.approx(whole["dominant"]["history"], rel=1e-4)
    assert split["loss"] == pytest.approx(whole["loss"], rel=1e-5)


# ---------------------------------------------------------------------------------------------------
# Gradient-norm spikes.


def test_grad_norm_spikes_against_the_running_median(tmp_path):
    norms = [1.0, 1.2, 0.9, 6.0, 1.1, 1.0, 4.0, 20.0, float("nan")]
    spikes = find_spikes(list(range(1, 10)), norms)
    assert [s["step"] for s in spikes] == [4, 8, 9]  # 6 > 5 x 1.0; 4 < 5 x 1.1; 20 > 5 x 1.1; nan
    assert spikes[0]["running_median"] == pytest.approx(1.0)
    assert find_spikes([1, 2, 3], [1.0, 100.0, 100.0]) == []  # too little history to judge
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": i + 1, "grad_norm": g}) + "\n" for i, g in enumerate(norms[:8]))
    )
    out = grad_norm_spikes(tmp_path)
    assert out["count"] == 2 and out["steps"] == [4, 8] and out["steps_logged"] == 8


# ---------------------------------------------------------------------------------------------------
# Forgetting probes.


def test_scoring_picks_the_highest_loglikelihood_and_normalises_by_length():
    items = [
        MCItem("a", "Q1", (" x", " yy", " z"), answer=1),
        MCItem("b", "Q2", (" short", " a much longer answer"), answer=1),
    ]
    # Item b: the long answer has the lower sum but the higher per-character log-likelihood.
    logprobs = [-3.0, -1.0, -2.0, -2.0, -6.0]
    acc, acc_norm = score_items(items, logprobs)
    assert acc == [True, False] and acc_norm == [True, True]
    assert requests_for(items)[3] == ("Q2", " short")
    out = compare(items, base=logprobs, tuned=[-1.0, -3.0, -2.0, -6.0, -2.0])
    assert out["acc"]["base"] == 0.5 and out["acc"]["tuned"] == 0.5 and out["acc"]["delta"] == 0
    assert (out["acc"]["lost"], out["acc"]["gained"], out["acc"]["mcnemar_p"]) == (1, 1, 1.0)
    assert out["acc_norm"]["lost"] == 1 and out["acc_norm"]["delta"] == -0.5


def test_continuation_logprobs_equal_a_hand_computed_sum(tiny_model_dir):
    import torch

    from tinyslm.models.load import load_model

    model, tok = load_model(str(tiny_model_dir), dtype=torch.float32)
    requests = [
        ("Question: What is 2 + 2?\nAnswer:", " 4"),
        ("Question: Name a colour.\nAnswer:", " dark blue sky"),
    ]
    got = continuation_logprobs(model, tok, requests, batch_size=2)
    for (ctx, cont), value in zip(requests, got, strict=True):
        ctx_ids = tok(ctx, add_special_tokens=False)["input_ids"]
        ids = tok(ctx + cont, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), -1)
        by_hand = sum(logp[t - 1, ids[t]].item() for t in range(len(ctx_ids), len(ids)))
        assert value == pytest.approx(by_hand, abs=1e-4)


def test_mmlu_subset_is_stratified_seeded_and_fixed(data_dir):
    items = load_mmlu(data_dir)
    assert len(items) == 14042 and all(0 <= it.answer < 4 for it in items)
    a, b = stratified_items(items, 200, 7), stratified_items(items, 200, 7)
    assert [it.id for it in a] == [it.id for it in b] and len(a) == 200
    per_subject = {}
    for it in a:
        per_subject[it.subject] = per_subject.get(it.subject, 0) + 1
    assert per_subject["professional_law"] == pytest.approx(200 * 1534 / 14042, abs=1)  # proportional share
    assert [it.id for it in stratified_items(items, 200, 8)] != [it.id for it in a]


# ---------------------------------------------------------------------------------------------------
# End to end: a tiny LoRA run, analysed.


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_model_dir) -> Path:
    from tinyslm.train.recipe import train

    d = tmp_path_factory.mktemp("diag")
    data = d / "small.jsonl"
    rows = [
        {
            "question": f"Tom has {i + 2} apples and gets {i + 1} more. How many apples?",
            "answer": f"{i + 2} + {i + 1} = {2 * i + 3}.\n#### {2 * i + 3}",
        }
        for i in range(8)
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = d / "run"
    run = train(tiny_train_config(tiny_model_dir, data, out, limit=8, max_steps=2))
    assert run["status"] == "finished"
    preds = out / "eval" / "gsm8k" / "predictions.jsonl"
    preds.parent.mkdir(parents=True)
    outputs = ["5 + 3 = 8 apples. #### 8", "5 * 3 = 16. #### 16", "so so so so so so"]
    preds.write_text("".join(json.dumps({"id": str(i), "output": o}) + "\n" for i, o in enumerate(outputs)))
    return out


def test_analyze_end_to_end(lora_run, data_dir):
    result = analyze(
        lora_run,
        probe_limit=4,
        device="cpu",
        progress=False,
        data_dir=data_dir,
        hvp_iters=3,
        hvp_batch=2,
        hvp_micro_batch=1,
    )
    on_disk = json.loads((lora_run / "diagnostics.json").read_text())
    assert on_disk == json.loads(json.dumps(result))
    assert set(on_disk) == {"summary", *MEASURES, "measured"}
    assert list(on_disk["summary"]) == list(summarize({}))  # every row has the same columns
    assert all(v is None or isinstance(v, (int, float, str)) for v in on_disk["summary"].values())

    f = result["forgetting"]
    for probe in ("arc_easy", "mmlu"):
        assert (
            f[probe]["n"] == 4
            and 0 <= f[probe]["acc"]["base"] <= 1
            and 0 <= f[probe]["acc"]["mcnemar_p"] <= 1
        )
        assert f[probe]["acc"]["delta"] == pytest.approx(f[probe]["acc"]["tuned"] - f[probe]["acc"]["base"])

    w = result["weight_displacement"]
    assert w["overall"]["n"] == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down)
    assert 0 < w["overall"]["mean"] < 1  # LoRA moved every adapted matrix, by a fraction of its norm
    assert result["intruder_dimensions"]["n_matrices"] == 14
    assert 0 <= result["intruder_dimensions"]["total"] <= 14 * 10

    s = result["sharpness"]
    assert s["space"] == "lora adapter parameters" and s["batch"]["examples"] == ["0", "1"]
    for who in ("base", "tuned"):
        assert s[who]["iterations"] <= 2 * 3 and len(s[who]["dominant"]["history"]) <= 3
    assert s["base"]["parameters"] == s["tuned"]["parameters"] > 0  # the same adapter space before and after
    assert s["micro_batch"] == 1 and s["base"]["micro_batches"] == s["tuned"]["micro_batches"] == 2
    assert result["summary"]["λmax space"] == "adapter"

    assert result["arithmetic_error_rate"]["overall"] == {
        "outputs": 3,
        "equations": 2,
        "false": 1,
        "rounded": 0,
        "rate": 0.5,
    }
    assert result["summary"]["repetition rate"] == pytest.approx(1 / 3, abs=1e-3)
    assert result["grad_norm_spikes"]["steps_logged"] == 2 and result["summary"]["grad-norm spikes"] == 0
    assert set(result["measured"]["seconds"]) >= set(MEASURES)
    peak = result["measured"]["peak_memory"]
    assert peak["unit"] == "MiB" and set(peak["by_step"]) == set(result["measured"]["seconds"])
    assert peak["kind"] in ("cpu_peak_rss", "cpu_max_rss_process")
    assert 0 < peak["by_step"]["sharpness"] <= peak["max"] == max(peak["by_step"].values())

    # A subset recomputes only what it names and keeps the rest.
    again = analyze(lora_run, measures="grad_norm_spikes", progress=False, device="cpu")
    assert again["forgetting"] == result["forgetting"] and again["measured"]["recomputed"] == [
        "grad_norm_spikes"
    ]
    kept = again["measured"]["peak_memory"]["by_step"]
    assert kept["sharpness"] == peak["by_step"]["sharpness"]  # kept with the measure it belongs to


def test_a_cpu_gets_the_small_sharpness_budget(lora_run, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(lora_run, run)
    s = analyze(run, measures="sharpness", device="cpu", progress=False)["sharpness"]
    iters, batch = HVP_DEFAULTS["cpu"]
    assert s["iters"] == iters and len(s["batch"]["examples"]) == batch < HVP_DEFAULTS["gpu"][1]
    assert s["base"]["micro_batches"] == batch  # one example per pass by default
    assert len(s["base"]["dominant"]["history"]) <= iters


def test_measure_names_are_checked():
    assert parse_measures(None) == list(MEASURES) == parse_measures("all")
    assert parse_measures("sharpness, forgetting") == ["forgetting", "sharpness"]
    with pytest.raises(UserError, match="unknown measure"):
        parse_measures("forgetting,vibes")


def _cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


def test_cli_bad_input_is_one_line_exit_2(tmp_path, lora_run, capsys):
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"status": "running", "method": "lora"}))
    no_final = tmp_path / "no_final"
    no_final.mkdir()
    (no_final / "run.json").write_text(json.dumps({"status": "finished", "method": "full", "model_ref": "x"}))
    cases = [
        ([str(tmp_path / "missing")], "run directory not found"),
        ([str(tmp_path)], "has no run.json"),
        ([str(unfinished)], "unfinished run (status running)"),
        ([str(no_final)], "has no final/"),
        ([str(lora_run), "--measures", "vibes"], "unknown measure"),
        ([str(lora_run), "--probe-limit", "0"], "--probe-limit: must be >= 1"),
        ([str(lora_run), "--hvp-micro-batch", "0"], "--hvp-micro-batch: must be >= 1"),
        ([str(lora_run), "--data-dir", str(tmp_path / "nodata")], "data directory not found"),
    ]
    for argv, message in cases:
        code, err = _cli(["analyze", *argv, "--no-progress"], capsys)
        assert code == 2 and message in err, (argv, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_cli_prints_the_summary(lora_run, capsys):
    assert (
        main(["analyze", str(lora_run), "--measures", "grad_norm_spikes,repetition_rate", "--no-progress"])
        == 0
    )
    out = capsys.readouterr().out
    assert "grad-norm spikes" in out and "diagnostics.json" in out
