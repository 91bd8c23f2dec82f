"""Jacobian regularizer (robench.jacobian): guards the math of PAPER.md "The regularizer".

What must not silently break:
- exact mode (n_proj=None / -1) equals ||J||_F^2 computed independently with
  torch.autograd.functional.jacobian, and JacobianReg is 0.5 * mean_i ||J_i||_F^2;
- the random-projection estimate C/n_proj * sum_k ||v_k^T J||^2 is unbiased (the factor C of the
  paper's eq. 7 / Algorithm 1 is present), has the variance PAPER.md states, and each draw is a
  Rayleigh quotient of J J^T (directions on the unit sphere, independent per example);
- the penalty is differentiable in the parameters (double backprop) with the right gradient;
- dtypes, batch size 1, any C >= 2, and clear ValueErrors for misuse;
- logits_and_frobenius_sq gives the reference path's numbers with every method (values and parameter
  gradients, dropout in train mode included: the Jacobian is of the forward that gave the logits), on
  registry models, and refuses or routes around what torch.func cannot do (BatchNorm in train mode).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

import robench.jacobian
from robench.jacobian import JacobianReg, frobenius_sq, jacobian_norm, logits_and_frobenius_sq

DTYPE = torch.float64


# ----------------------------------------------------------------------------------------- helpers


def make_mlp(d_in: int, classes: int, *, hidden: int = 7, act: type[nn.Module] = nn.Tanh, seed: int = 0):
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Flatten(), nn.Linear(d_in, hidden), act(), nn.Linear(hidden, hidden), act(),
        nn.Linear(hidden, classes),
    ).to(DTYPE)  # fmt: skip


def make_convnet(classes: int, *, seed: int = 0):
    """Tiny conv net on 1 x 6 x 6 inputs (conv, ReLU, max-pool, linear): piecewise linear in x."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(3, 4, 3), nn.Tanh(),
        nn.Flatten(), nn.Linear(4, classes),
    ).to(DTYPE)  # fmt: skip


MODEL_KINDS = {
    # name: (builder(C), input shape of one example)
    "mlp": (lambda c: make_mlp(5, c), (5,)),
    "conv": (lambda c: make_convnet(c), (1, 6, 6)),
}


def make_case(kind: str, classes: int, batch: int = 4, seed: int = 1):
    build, shape = MODEL_KINDS[kind]
    model = build(classes)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, *shape, dtype=DTYPE, generator=gen)
    return model, x


def reference_jacobians(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobians (B x C x D) from torch.autograd.functional.jacobian, one example at a time."""
    jacs = []
    for xi in x:
        jac = torch.autograd.functional.jacobian(lambda v: model(v.unsqueeze(0)).squeeze(0), xi)
        jacs.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(jacs)


def reference_sq(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return reference_jacobians(model, x).pow(2).sum(dim=(1, 2))


def forward(model: nn.Module, x: torch.Tensor):
    x = x.detach().clone().requires_grad_(True)
    return x, model(x)


# ------------------------------------------------------------------------------------- exact mode


@pytest.mark.parametrize("kind", sorted(MODEL_KINDS))
@pytest.mark.parametrize("classes", [2, 3, 10])
def test_exact_mode_equals_autograd_jacobian(kind, classes):
    model, x = make_case(kind, classes)
    expected = reference_sq(model, x)
    assert expected.min() > 1e-3  # a non-trivial Jacobian, or the comparison would be vacuous

    xg, logits = forward(model, x)
    got = frobenius_sq(xg, logits, n_proj=None)
    assert got.shape == (x.shape[0],)
    assert got.dtype == DTYPE
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-8)

    # jacobian_norm returns the per-example norm itself (not its square)
    norms = jacobian_norm(model, x)
    assert norms.shape == (x.shape[0],)
    torch.testing.assert_close(norms, expected.sqrt(), rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("n_proj", [None, -1])
@pytest.mark.parametrize("classes", [2, 3, 10])
def test_jacobian_reg_exact_is_half_mean_squared_norm(n_proj, classes):
    model, x = make_case("mlp", classes, batch=5)
    expected = 0.5 * reference_sq(model, x).mean()
    reg = JacobianReg(n_proj=n_proj)
    assert reg.n_proj is None
    assert "exact" in repr(reg)
    xg, logits = forward(model, x)
    penalty = reg(xg, logits)
    assert penalty.dim() == 0
    torch.testing.assert_close(penalty, expected, rtol=1e-5, atol=1e-10)
    # sum instead of mean, or no 1/2, would be off by a factor >= 2
    assert not math.isclose(penalty.item(), 2 * expected.item(), rel_tol=0.1)


def test_exact_mode_on_real_model_and_real_images(mnist_test_small):
    """lenet5 (tanh, max-pool) from the model registry on two real MNIST digits, in float64."""
    from robench.data import to_unit_float
    from robench.models import build_model

    torch.manual_seed(0)
    model = build_model("lenet5", "mnist").to(DTYPE).eval()
    images, _ = mnist_test_small
    x = to_unit_float(images[:2]).to(DTYPE)
    expected = reference_sq(model, x)
    xg, logits = forward(model, x)
    torch.testing.assert_close(frobenius_sq(xg, logits, n_proj=None), expected, rtol=1e-5, atol=0)
    torch.testing.assert_close(jacobian_norm(model, x), expected.sqrt(), rtol=1e-5, atol=0)


def test_linear_model_has_its_weight_norm():
    """For f(x) = W x + b, J = W for every example: ||J||_F^2 = ||W||_F^2 exactly."""
    torch.manual_seed(3)
    lin = nn.Linear(6, 4).to(DTYPE)
    x, logits = forward(lin, torch.randn(3, 6, dtype=DTYPE))
    expected = lin.weight.detach().pow(2).sum().expand(3)
    torch.testing.assert_close(frobenius_sq(x, logits, n_proj=None), expected, rtol=1e-12, atol=0)


# ---------------------------------------------------------------------------- jacobian_norm details


def test_jacobian_norm_chunks_leave_grads_and_input_alone():
    model, x = make_case("mlp", 3, batch=7)
    expected = reference_sq(model, x).sqrt()
    sentinel = [torch.full_like(p, 0.25) for p in model.parameters()]
    for p, s in zip(model.parameters(), sentinel):
        p.grad = s.clone()
    with torch.no_grad():  # jacobian_norm must work inside evaluation code too
        norms = jacobian_norm(model, x, batch_size=3)  # chunks of 3, 3, 1
    torch.testing.assert_close(norms, expected, rtol=1e-5, atol=1e-8)
    assert not norms.requires_grad
    assert not x.requires_grad and x.grad is None
    for p, s in zip(model.parameters(), sentinel):
        assert torch.equal(p.grad, s)


def test_jacobian_norm_empty_input():
    model, _ = make_case("mlp", 3)
    out = jacobian_norm(model, torch.zeros(0, 5, dtype=DTYPE))
    assert out.shape == (0,)


# ------------------------------------------------------------------------- random-projection mode


def theoretical_variance(jac: torch.Tensor, n_proj: int) -> float:
    """PAPER.md: Var = (2C/(C+2)) Tr((JJ^T)^2) - (2/(C+2)) ||J||_F^4 for one projection, / n_proj."""
    c = jac.shape[0]
    a = jac @ jac.T
    one = (2 * c / (c + 2)) * torch.trace(a @ a) - (2 / (c + 2)) * torch.trace(a) ** 2
    return one.item() / n_proj


@pytest.mark.parametrize("classes", [2, 10])
@pytest.mark.parametrize("n_proj", [1, 3])
def test_random_projection_is_unbiased(classes, n_proj):
    """4000 independent draws of the estimate for one example: their mean is within 3 standard errors
    of the exact value, and 'without the factor C' (or without the 1/n_proj) would be far outside."""
    draws = 4000
    model, x0 = make_case("mlp", classes, batch=1, seed=5)
    jac = reference_jacobians(model, x0)[0]
    exact = jac.pow(2).sum().item()
    eig = torch.linalg.eigvalsh(jac @ jac.T)

    # one batch of identical copies: every example gets its own random directions
    x = x0.expand(draws, *x0.shape[1:]).clone().requires_grad_(True)
    gen = torch.Generator().manual_seed(1234 + classes + n_proj)
    est = frobenius_sq(x, model(x), n_proj=n_proj, generator=gen, create_graph=False)
    assert est.shape == (draws,) and est.dtype == DTYPE

    mean = est.mean().item()
    se = est.std().item() / math.sqrt(draws)
    assert se > 0, "all examples got the same direction"
    assert abs(mean - exact) < 3 * se, (mean, exact, se)
    # The test has teeth: an estimate without the factor C (or scaled by C but not / n_proj) is off
    # by a factor of at least 2 and lands many standard errors away.
    assert abs(mean / classes - exact) > 10 * se
    if n_proj > 1:
        assert abs(mean * n_proj - exact) > 10 * se

    # the spread is the one PAPER.md derives for unit-sphere directions (Gaussian ones would be wider)
    var_theory = theoretical_variance(jac, n_proj)
    assert est.var().item() == pytest.approx(var_theory, rel=0.2)

    # each single-projection draw is C times a Rayleigh quotient of J J^T, hence between C*lambda_min and
    # C*lambda_max (with n_proj projections, their average is too)
    tol = 1e-9 * exact
    assert est.min().item() >= classes * eig.min().item() - tol
    assert est.max().item() <= classes * eig.max().item() + tol


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    classes=st.integers(2, 12),
    extra_dims=st.integers(0, 4),
    batch=st.integers(1, 4),
    n_proj=st.integers(1, 3),
    scale=st.floats(0.1, 10.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_projection_exact_when_rows_are_orthogonal(classes, extra_dims, batch, n_proj, scale, seed):
    """If W W^T = s I (orthogonal rows, equal norms), every unit direction v gives ||v^T W||^2 = s, so
    each single draw of C/n_proj * sum_k ||v_k^T W||^2 must equal ||W||_F^2 = C s exactly: this pins the
    factor C and the unit normalization of the directions for every C, batch size and n_proj."""
    gen = torch.Generator().manual_seed(seed)
    d = classes + extra_dims
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=DTYPE, generator=gen))
    lin = nn.Linear(d, classes, bias=True).to(DTYPE)
    with torch.no_grad():
        lin.weight.copy_(scale * q[:classes])
    x = torch.randn(batch, d, dtype=DTYPE, generator=gen, requires_grad=True)
    est = frobenius_sq(x, lin(x), n_proj=n_proj, generator=gen)
    expected = torch.full((batch,), classes * scale**2, dtype=DTYPE)
    torch.testing.assert_close(est, expected, rtol=1e-10, atol=0)
    exact = frobenius_sq(x, lin(x), n_proj=None)
    torch.testing.assert_close(exact, expected, rtol=1e-10, atol=0)


def test_generator_makes_projections_reproducible():
    model, x = make_case("mlp", 10, batch=6)

    def estimate(seed):
        xg, logits = forward(model, x)
        return frobenius_sq(xg, logits, n_proj=1, generator=torch.Generator().manual_seed(seed))

    a, b, c = estimate(7), estimate(7), estimate(8)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    # the directions differ between examples of one batch: identical inputs, different estimates
    xs = x[:1].expand(6, -1).clone().requires_grad_(True)
    est = frobenius_sq(xs, model(xs), n_proj=1, generator=torch.Generator().manual_seed(0))
    assert est.unique().numel() == 6


# --------------------------------------------------------------------------- gradients (double bp)


def penalty_and_params(n_proj, seed=11):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).to(DTYPE)
    x0 = torch.randn(3, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))
    reg = JacobianReg(n_proj=n_proj)

    def penalty():
        x = x0.clone().requires_grad_(True)
        gen = torch.Generator().manual_seed(99)  # same directions at every evaluation
        return reg(x, model(x), generator=gen)

    return penalty, list(model.parameters())


@pytest.mark.parametrize("n_proj", [None, 2])
def test_penalty_gradient_matches_finite_differences(n_proj):
    penalty, params = penalty_and_params(n_proj)
    value = penalty()
    assert value.requires_grad, "penalty is not differentiable in the parameters (create_graph)"
    # the output bias does not enter J: autograd reports it unused, its true gradient is 0
    grads = torch.autograd.grad(value, params, allow_unused=True)
    assert grads[-1] is None
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]

    h = 1e-6
    checked = 0
    for p, g in zip(params, grads):
        flat, gflat = p.data.view(-1), g.view(-1)
        for i in range(flat.numel()):
            orig = flat[i].item()
            flat[i] = orig + h  # p.data: no autograd history for the perturbation itself
            up = penalty().item()
            flat[i] = orig - h
            down = penalty().item()
            flat[i] = orig
            fd = (up - down) / (2 * h)
            assert gflat[i].item() == pytest.approx(fd, rel=1e-6, abs=1e-8), (p.shape, i)
            checked += 1
    assert checked == 3 * 4 + 4 + 4 * 3 + 3
    # the gradient is not trivially zero (J depends on every parameter but the output bias)
    assert all(g.abs().min() > 1e-6 for g in grads[:-1])


def test_create_graph_flag():
    model, x = make_case("mlp", 3)
    xg, logits = forward(model, x)
    assert frobenius_sq(xg, logits, n_proj=None, create_graph=True).requires_grad
    xg, logits = forward(model, x)
    assert not frobenius_sq(xg, logits, n_proj=None, create_graph=False).requires_grad
    xg, logits = forward(model, x)
    assert frobenius_sq(xg, logits, n_proj=1).requires_grad  # default: follows grad mode


# ------------------------------------------------------------------------------ shapes and dtypes


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(classes=st.integers(2, 12), batch=st.integers(1, 4), d_in=st.integers(1, 5), seed=st.integers(0, 1000))
def test_exact_mode_any_shape(classes, batch, d_in, seed):
    model = make_mlp(d_in, classes, hidden=4, seed=seed)
    x = torch.randn(batch, d_in, dtype=DTYPE, generator=torch.Generator().manual_seed(seed))
    expected = reference_sq(model, x)
    xg, logits = forward(model, x)
    got = frobenius_sq(xg, logits, n_proj=None)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-10)
    xg, logits = forward(model, x)
    reg = JacobianReg(n_proj=-1)(xg, logits)
    torch.testing.assert_close(reg, 0.5 * expected.mean(), rtol=1e-5, atol=1e-10)
    xg, logits = forward(model, x)
    est = JacobianReg(n_proj=1)(xg, logits, generator=torch.Generator().manual_seed(seed))
    assert est.dim() == 0 and torch.isfinite(est) and est >= 0


@pytest.mark.parametrize("n_proj", [None, 1, 3])
def test_batch_size_one(n_proj):
    model, x = make_case("conv", 2, batch=1)
    expected = reference_sq(model, x)
    xg, logits = forward(model, x)
    got = frobenius_sq(xg, logits, n_proj=n_proj, generator=torch.Generator().manual_seed(0))
    assert got.shape == (1,)
    if n_proj is None:
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-10)
    else:  # C = 2: the estimate lies between C*lambda_min and C*lambda_max of J J^T
        assert 0 < got.item() <= 2 * expected.item() * (1 + 1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n_proj", [None, 1])
def test_result_has_logits_dtype(dtype, n_proj):
    model, x = make_case("mlp", 4)
    model = model.to(dtype)
    xg, logits = forward(model, x.to(dtype))
    assert logits.dtype == dtype
    out = frobenius_sq(xg, logits, n_proj=n_proj, generator=torch.Generator().manual_seed(0))
    assert out.dtype == dtype
    assert JacobianReg(n_proj)(*forward(model, x.to(dtype))).dtype == dtype
    assert jacobian_norm(model, x.to(dtype)).dtype == dtype


def test_float64_estimate_is_computed_in_float64():
    """Float64 directions keep float64 precision: the orthogonal-rows identity holds to 1e-13,
    which float32 directions (about 1e-7 relative) could not reach."""
    c, d = 5, 8
    q, _ = torch.linalg.qr(torch.randn(d, d, dtype=DTYPE, generator=torch.Generator().manual_seed(0)))
    lin = nn.Linear(d, c, bias=False).to(DTYPE)
    with torch.no_grad():
        lin.weight.copy_(q[:c])
    x = torch.randn(64, d, dtype=DTYPE, requires_grad=True)
    est = frobenius_sq(x, lin(x), n_proj=1, generator=torch.Generator().manual_seed(1))
    assert (est - c).abs().max().item() < 1e-13


# ----------------------------------------------------------------------------------------- misuse


def test_one_class_is_refused():
    model, x = make_case("mlp", 1)
    xg, logits = forward(model, x)
    for n_proj in (None, 1):
        with pytest.raises(ValueError, match="at least 2 output classes"):
            frobenius_sq(xg, logits, n_proj=n_proj)
    with pytest.raises(ValueError, match="at least 2"):
        JacobianReg()(xg, logits)


def test_input_without_requires_grad_is_refused():
    model, x = make_case("mlp", 3)
    logits = model(x)  # parameters require grad, x does not
    with pytest.raises(ValueError, match=r"requires_grad_\(True\)"):
        frobenius_sq(x, logits)
    with pytest.raises(ValueError, match="does not require grad"):
        JacobianReg()(x, logits)


def test_other_misuse_is_refused():
    model, x = make_case("mlp", 3)
    xg, logits = forward(model, x)
    with pytest.raises(ValueError, match="B x C"):
        frobenius_sq(xg, logits.reshape(-1))
    with pytest.raises(ValueError, match="examples"):
        frobenius_sq(xg[:2], logits)
    with pytest.raises(ValueError, match="do not require grad"):
        frobenius_sq(xg, logits.detach())
    with pytest.raises(ValueError, match="do not depend on x"):
        frobenius_sq(xg, model(xg.detach().clone().requires_grad_(True)))
    with pytest.raises(ValueError, match="n_proj"):
        frobenius_sq(xg, logits, n_proj=0)


@pytest.mark.parametrize("bad", [0, -2, 1.5, "1"])
def test_bad_n_proj_is_refused(bad):
    with pytest.raises(ValueError, match="n_proj"):
        JacobianReg(n_proj=bad)


# ------------------------------------------------------------- model-aware path: logits_and_frobenius_sq


def registry_model(name: str, dataset: str, *, dropout: float = 0.5) -> nn.Module:
    from robench.models import build_model

    torch.manual_seed(0)
    return build_model(name, dataset, dropout=dropout).to(DTYPE).train()


def mnist_batch(mnist_test_small, n: int = 4):
    from robench.data import to_unit_float

    images, labels = mnist_test_small
    return to_unit_float(images[:n]).to(DTYPE), labels[:n]


def penalty_run(model, x, y, n_proj, method, *, seed=0):
    """One seeded training-style evaluation: logits, per-example norms and the parameter gradients of
    cross-entropy + 0.5 * mean(sq). method=None is the reference: model(x), then frobenius_sq."""
    torch.manual_seed(seed)  # dropout masks
    gen = torch.Generator(device=x.device).manual_seed(seed + 100)
    if method is None:
        xg = x.clone().requires_grad_(True)
        logits = model(xg)
        sq = frobenius_sq(xg, logits, n_proj=n_proj, generator=gen)
    else:
        logits, sq = logits_and_frobenius_sq(model, x, n_proj=n_proj, generator=gen, method=method)
    loss = F.cross_entropy(logits, y) + 0.5 * sq.mean()
    params = list(model.parameters())
    grads = torch.autograd.grad(loss, params, allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    return logits.detach(), sq.detach(), grads


def assert_same_run(got, expected):
    (logits, sq, grads), (ref_logits, ref_sq, ref_grads) = got, expected
    torch.testing.assert_close(logits, ref_logits, rtol=1e-10, atol=0)
    torch.testing.assert_close(sq, ref_sq, rtol=1e-5, atol=1e-12)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "lenet"])
@pytest.mark.parametrize("n_proj", [None, 1, 3])
@pytest.mark.parametrize("method", ["autograd", "vmap", "auto"])
def test_methods_equal_reference_path_with_dropout(mnist_test_small, name, n_proj, method):
    """Real MNIST digits, registry models with dropout 0.5 in train mode, float64: same logits, same
    per-example norms, same parameter gradients as model(x) followed by frobenius_sq."""
    model = registry_model(name, "mnist")
    x, y = mnist_batch(mnist_test_small)
    expected = penalty_run(model, x, y, n_proj, None)
    got = penalty_run(model, x, y, n_proj, method)
    assert_same_run(got, expected)
    assert all(g.abs().max() > 0 for g in got[2][::2]), "weights without gradient: the test would be vacuous"
    # Teeth: another dropout mask (or another draw of directions) changes the numbers well beyond the
    # tolerance, so a Jacobian taken of a second forward pass could not pass the comparison above.
    other = penalty_run(model, x, y, n_proj, method, seed=1)
    assert not torch.allclose(other[1], expected[1], rtol=1e-3)


def test_exact_vmap_equals_independent_jacobian(mnist_test_small):
    """Exact mode against torch.autograd.functional.jacobian (no dropout, so the forward is a function)."""
    model = registry_model("lenet", "mnist", dropout=0.0)
    x, _ = mnist_batch(mnist_test_small, 2)
    _, sq = logits_and_frobenius_sq(model, x, n_proj=None, method="vmap")
    torch.testing.assert_close(sq, reference_sq(model, x), rtol=1e-5, atol=0)


def test_vmap_in_chunks_gives_the_same_numbers(monkeypatch):
    """Many classes times a large batch go through vmap in chunks; the result must not change."""
    model, x = make_case("conv", 10, batch=4)
    _, whole = logits_and_frobenius_sq(model, x, n_proj=None, method="vmap")
    monkeypatch.setattr(robench.jacobian, "_MAX_BATCHED_ROWS", 9)  # 2 vectors per chunk, 5 chunks
    _, chunked = logits_and_frobenius_sq(model, x, n_proj=None, method="vmap")
    torch.testing.assert_close(chunked, whole, rtol=1e-12, atol=0)
    torch.testing.assert_close(chunked, reference_sq(model, x), rtol=1e-5, atol=1e-10)


def test_resnet18_batchnorm_train_mode():
    """BatchNorm in train mode: "auto" takes the autograd path and matches it (running statistics
    updated once per call, as by one forward); "vmap" refuses with a message instead of failing inside
    torch.func. With BatchNorm in eval mode, vmap works on the same network."""
    model = registry_model("resnet18", "cifar10", dropout=0.5)
    x = torch.rand(2, 3, 16, 16, dtype=DTYPE, generator=torch.Generator().manual_seed(0))  # 16 px: 4x cheaper
    y = torch.tensor([3, 7])
    bn = model.net.bn1
    assert robench.jacobian._updates_running_stats(model)  # what keeps "auto" off vmap (on CUDA)
    before = bn.num_batches_tracked.item()
    expected = penalty_run(model, x, y, 2, None)
    assert bn.num_batches_tracked.item() == before + 1
    assert_same_run(penalty_run(model, x, y, 2, "auto"), expected)
    assert bn.num_batches_tracked.item() == before + 2
    with pytest.raises(ValueError, match="BatchNorm in training mode"):
        logits_and_frobenius_sq(model, x, n_proj=2, method="vmap")
    assert bn.num_batches_tracked.item() == before + 2

    model.eval()
    assert not robench.jacobian._updates_running_stats(model)
    gen = torch.Generator().manual_seed(0)
    x1 = x[:1].clone().requires_grad_(True)
    ref = frobenius_sq(x1, model(x1), n_proj=2, generator=gen)
    _, got = logits_and_frobenius_sq(model, x[:1], n_proj=2, generator=gen.manual_seed(0), method="vmap")
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)


@pytest.mark.parametrize("method", ["autograd", "vmap"])
def test_no_graph_mode_leaves_model_and_input_alone(method):
    model, x = make_case("mlp", 3, batch=3)
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.25)
    with torch.no_grad():
        logits, sq = logits_and_frobenius_sq(model, x, n_proj=None, method=method)
    torch.testing.assert_close(sq, reference_sq(model, x), rtol=1e-5, atol=1e-10)
    assert not logits.requires_grad and not sq.requires_grad
    assert not x.requires_grad and x.grad is None
    assert all(torch.equal(p.grad, torch.full_like(p, 0.25)) for p in model.parameters())
    _, sq = logits_and_frobenius_sq(model, x, n_proj=None, method=method)  # grad mode on: differentiable
    assert sq.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("n_proj", [None, 3])
def test_methods_equal_reference_path_on_cuda(mnist_test_small, n_proj):
    """On CUDA "auto" batches the products (vmap): same numbers as the reference path there too."""
    model = registry_model("lenet", "mnist").cuda()
    x, y = mnist_batch(mnist_test_small)
    x, y = x.cuda(), y.cuda()
    assert robench.jacobian._auto_method(model, x, n_proj) == "vmap"
    expected = penalty_run(model, x, y, n_proj, None)
    assert_same_run(penalty_run(model, x, y, n_proj, "auto"), expected)


def test_bad_method_is_refused():
    model, x = make_case("mlp", 3)
    with pytest.raises(ValueError, match="method"):
        logits_and_frobenius_sq(model, x, method="jvp")
    with pytest.raises(ValueError, match="n_proj"):
        logits_and_frobenius_sq(model, x, n_proj=0)
