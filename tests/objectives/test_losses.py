from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from forgetless.model.likelihood import IGNORE, ce_sum, count_targets, soften
from forgetless.objectives.fused_kl import frozen_linear, kl_sum_fused, kl_topk_sum_fused
from forgetless.objectives.losses import (
    bradley_terry_loss,
    ce_sum_chunked,
    dpo_loss,
    ewc_penalty,
    gae,
    kl_rows,
    kl_sum,
    kl_sum_chunked,
    kl_topk_sum,
    l2_penalty,
    position_masks,
    ppo_losses,
)


def test_ce_sum_matches_hand_computation():
    """Vocabulary of 2, one row of 3 positions; position t predicts token t+1.

    logits[0] = [0, 0]        -> p(token 1) = 1/2           -> -log = log 2
    logits[1] = [log 3, 0]    -> p(token 0) = 3/4           -> -log = log(4/3)
    labels = [x, 1, 0]: both targets count -> sum = log 2 + log(4/3) = log(8/3)
    """
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 1, 0]])
    assert torch.isclose(ce_sum(logits, labels), torch.tensor(math.log(8 / 3)))
    assert count_targets(labels) == 2


def test_ce_sum_skips_ignored_targets():
    """Masking the second target leaves only log 2."""
    logits = torch.tensor([[[0.0, 0.0], [math.log(3), 0.0], [5.0, -5.0]]])
    labels = torch.tensor([[IGNORE, 1, IGNORE]])
    assert torch.isclose(ce_sum(logits, labels), torch.tensor(math.log(2)))
    assert count_targets(labels) == 1


HALF = [math.log(0.5), math.log(0.5)]


QUARTER = [math.log(0.25), math.log(0.75)]


@pytest.mark.parametrize(
    ("temperature", "direction", "expected"),
    [
        # p_s = (.5, .5), p_t = (.25, .75): KL(s‖t) = .5 ln(.5/.25) + .5 ln(.5/.75) = .5 ln(4/3)
        (1.0, "finetuned_base", 0.5 * math.log(4 / 3)),
        # KL(t‖s) = .25 ln(.25/.5) + .75 ln(.75/.5)
        (1.0, "base_finetuned", 0.25 * math.log(0.5) + 0.75 * math.log(1.5)),
        # T=2: p_t ∝ (√.25, √.75) = (.366025, .633975), p_s stays uniform; times T² = 4
        (2.0, "finetuned_base", 4 * (0.5 * math.log(0.5 / 0.3660254) + 0.5 * math.log(0.5 / 0.6339746))),
    ],
)
def test_kl_matches_hand_computed_values(temperature, direction, expected):
    student, teacher = torch.tensor([HALF, HALF]), torch.tensor([QUARTER, QUARTER])
    got = kl_sum(student, teacher, temperature, direction)
    assert got.item() == pytest.approx(2 * expected, abs=1e-6)  # two identical rows, summed


def test_kl_rows_are_the_terms_of_kl_sum():
    student, teacher = torch.tensor([HALF, HALF]), torch.tensor([QUARTER, QUARTER])
    rows = kl_rows(student, teacher)
    assert rows.tolist() == pytest.approx([0.5 * math.log(4 / 3)] * 2, abs=1e-6)
    x, y = torch.randn(5, 11), torch.randn(5, 11)
    assert kl_rows(x, y, 2.0).sum() * 4 == kl_sum(x, y, 2.0)


def test_kl_is_zero_for_identical_distributions_and_unknown_direction_fails():
    x = torch.randn(3, 7)
    assert kl_sum(x, x).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        kl_sum(x, x, direction="sideways")


def test_l2_and_ewc_on_known_tensors():
    params = [torch.tensor([1.0, 2.0]), torch.tensor([3.0])]
    initial = [torch.tensor([0.0, 0.0]), torch.tensor([1.0])]
    fisher = [torch.tensor([0.5, 2.0]), torch.tensor([0.25])]
    assert l2_penalty(params, initial).item() == pytest.approx(1 + 4 + 4)  # (1-0)² + (2-0)² + (3-1)²
    assert ewc_penalty(params, initial, fisher).item() == pytest.approx(0.5 * 1 + 2 * 4 + 0.25 * 4)


def test_position_masks_split_task_answers_context_and_rehearsal():
    labels = torch.tensor([[IGNORE, IGNORE, 7, 8, IGNORE], [IGNORE, 5, 6, IGNORE, IGNORE]])
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    m = position_masks(labels, attention, torch.tensor([False, True]))
    # shifted: position t predicts token t+1
    assert m["task_answers"].tolist() == [[False, True, True, False], [False] * 4]
    assert m["context"].tolist() == [[True, False, False, True], [False] * 4]
    assert m["rehearsal_answers"].tolist() == [[False] * 4, [True, True, False, False]]
    assert m["rehearsal"].tolist() == [[False] * 4, [True, True, False, False]]


def test_dpo_loss_by_hand():
    """π(c)=−1, π(r)=−2, π_ref(c)=π_ref(r)=−1.5, β=0.1: h = 0.5 − (−0.5) = 1;
    sigmoid: −log σ(0.1) = log(1 + e^−0.1) = 0.6443967; rewards β·0.5 = 0.05 and β·(−0.5) = −0.05;
    ipo: (1 − 1/(2·0.1))² = (1 − 5)² = 16."""
    args = [torch.tensor([x]) for x in (-1.0, -2.0, -1.5, -1.5)]
    loss, chosen, rejected = dpo_loss(*args, beta=0.1)
    assert loss.item() == pytest.approx(0.6443967, abs=1e-6)
    assert (chosen.item(), rejected.item()) == pytest.approx((0.05, -0.05))
    assert dpo_loss(*args, beta=0.1, kind="ipo")[0].item() == pytest.approx(16.0)


def test_bradley_terry_by_hand():
    """r_c = 2, r_r = 0: −log σ(2) = log(1 + e^−2) = 0.126928; equal rewards give log 2."""
    assert bradley_terry_loss(torch.tensor([2.0]), torch.tensor([0.0])).item() == pytest.approx(0.126928, abs=1e-6)
    assert bradley_terry_loss(torch.tensor([1.0]), torch.tensor([1.0])).item() == pytest.approx(math.log(2))


def test_gae_by_hand():
    """rewards [0, 1], values [0.5, 0.2], γ = 1: δ1 = 1 − 0.2 = 0.8, δ0 = 0 + 0.2 − 0.5 = −0.3;
    λ = 1: A = [−0.3 + 0.8, 0.8] = [0.5, 0.8], returns A + V = [1, 1]; λ = 0.5: A0 = −0.3 + 0.4 = 0.1.
    A masked-out position (padding after the answer) neither gets nor passes on advantage."""
    r, v, m = torch.tensor([[0.0, 1.0]]), torch.tensor([[0.5, 0.2]]), torch.tensor([[1.0, 1.0]])
    adv, ret = gae(r, v, m, 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.8]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0]]))
    assert gae(r, v, m, 1.0, 0.5)[0][0, 0].item() == pytest.approx(0.1)
    adv, _ = gae(torch.tensor([[1.0, 5.0]]), torch.tensor([[0.5, 9.0]]), torch.tensor([[1.0, 0.0]]), 1.0, 1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0]]))


def test_ppo_losses_by_hand():
    """ρ = 1: policy loss = −ΣA = −(2 − 1) = −1. ρ = 2, ε = 0.2: A=2 → −min(4, 2.4) = −2.4; A=−1 →
    −min(−2, −1.2) = 2; sum −0.4. Value V=1, V_old=0, R=2, ε_v=0.2: ½·max((1−2)², (0.2−2)²) = 1.62."""
    adv, mask = torch.tensor([[2.0, -1.0]]), torch.ones(1, 2)
    zero = torch.zeros(1, 2)
    policy, _ = ppo_losses(zero, zero, adv, zero, zero, zero, mask)
    assert policy.item() == pytest.approx(-1.0)
    policy, _ = ppo_losses(zero + math.log(2), zero, adv, zero, zero, zero, mask)
    assert policy.item() == pytest.approx(-0.4, abs=1e-6)
    one = torch.ones(1, 1)
    _, value = ppo_losses(one * 0, one * 0, one * 0, one, one * 0, one * 2, one)
    assert value.item() == pytest.approx(1.62)


@pytest.mark.parametrize("chunk", [3, 100])
@pytest.mark.parametrize("direction", ["finetuned_base", "base_finetuned"])
def test_chunked_ce_and_kl_equal_plain_values_and_gradients(chunk, direction):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=False)
    states = torch.randn(11, 8, requires_grad=True)
    teacher = torch.randn(11, 8)
    targets = torch.randint(0, 50, (11,))
    t_logits = head(teacher).detach()  # the teacher carries no gradient
    plain = F.cross_entropy(head(states), targets, reduction="sum") + kl_sum(head(states), t_logits, 2.0, direction)
    g_plain = torch.autograd.grad(plain, [states, head.weight])
    lean = ce_sum_chunked(states, targets, head, chunk)
    lean = lean + kl_sum_chunked(states, teacher, 2.0, direction, head, head, chunk)
    g_lean = torch.autograd.grad(lean, [states, head.weight])
    torch.testing.assert_close(lean, plain)
    for a, b in zip(g_lean, g_plain, strict=True):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("chunk", [3, 100])
@pytest.mark.parametrize("direction", ["finetuned_base", "base_finetuned"])
def test_fused_kl_equals_the_plain_kl_value_and_gradient(direction, chunk, bias, temperature):
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50, bias=bias).requires_grad_(False)
    states, teacher = torch.randn(11, 8, requires_grad=True), torch.randn(11, 8)
    plain = kl_sum(head(states), head(teacher), temperature, direction)
    fused = kl_sum_fused(states, teacher, head, temperature, direction, chunk)
    torch.testing.assert_close(fused, plain)
    # a weight on the term (the loop's λ / count) reaches the states' gradient, as it does through autograd
    (g_plain,) = torch.autograd.grad(0.3 * plain, [states])
    (g_fused,) = torch.autograd.grad(0.3 * fused, [states])
    torch.testing.assert_close(g_fused, g_plain)
    assert frozen_linear(head) and not frozen_linear(torch.nn.Linear(8, 50))


def test_fused_kl_gradient_by_hand():
    """Identity head, T = 1, student logits (0, ln 3) → p = (1/4, 3/4), teacher q = (1/2, 1/2):
    KL(p‖q) = ¼ ln ½ + ¾ ln 1.5, and d/dz_j = p_j (ln(p_j/q_j) − KL)."""
    head = torch.nn.Linear(2, 2, bias=False).requires_grad_(False)
    head.weight.copy_(torch.eye(2))
    z = torch.tensor([[0.0, math.log(3)]], requires_grad=True)
    kl = kl_sum_fused(z, torch.zeros(1, 2), head)
    want = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kl.item() == pytest.approx(want, abs=1e-6)
    (g,) = torch.autograd.grad(kl, [z])
    expect = [0.25 * (math.log(0.5) - want), 0.75 * (math.log(1.5) - want)]
    assert g[0].tolist() == pytest.approx(expect, abs=1e-6)


def test_topk_kl_by_hand_and_against_the_exact_kl():
    """p_s = softmax(0, 0, ln 2) = (1/4, 1/4, 1/2); teacher keeps its top-1 token 2 with p_t = 0.8.
    Coarsened: student (1/2 on token 2, 1/2 tail), teacher (0.8, 0.2):
    KL(s‖t) = ½ ln(0.5/0.8) + ½ ln(0.5/0.2) = ½ ln(0.625·2.5) = ½ ln 1.5625 = 0.2231."""
    student = torch.tensor([[0.0, 0.0, math.log(2)]])
    got = kl_topk_sum(student, torch.tensor([[2]]), torch.tensor([[math.log(0.8)]]), torch.tensor([math.log(0.2)]))
    assert got.item() == pytest.approx(0.5 * math.log(1.5625), abs=1e-6)
    torch.manual_seed(1)
    s, t = torch.randn(6, 40), torch.randn(6, 40)
    log_t = F.log_softmax(t, -1)
    exact = kl_sum(s, t)
    top, idx = log_t.topk(40)  # k = V: no tail, the exact KL
    whole = kl_topk_sum(s, idx, top, torch.full((6,), -30.0))
    assert whole.item() == pytest.approx(exact.item(), rel=1e-4)
    top, idx = log_t.topk(5)
    tail = torch.log1p(-top.exp().sum(-1))
    assert kl_topk_sum(s, idx, top, tail).item() <= exact.item() + 1e-6  # coarsening never adds KL


@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("chunk", [4, 100])
@pytest.mark.parametrize("direction", ["finetuned_base", "base_finetuned"])
def test_fused_topk_kl_equals_the_plain_one_value_and_gradient(direction, chunk, temperature):
    torch.manual_seed(2)
    head = torch.nn.Linear(8, 50, bias=True).requires_grad_(False)
    states, teacher = torch.randn(11, 8, requires_grad=True), 2 * torch.randn(11, 8)
    log_t = F.log_softmax(soften(head(teacher), temperature), -1)
    top, idx = log_t.topk(6)
    tail = torch.log1p(-top.exp().sum(-1))
    top16 = top.to(torch.float16)  # the cache's dtypes: int32 ids, fp16 log-probabilities
    plain = kl_topk_sum(head(states), idx, top16, tail, temperature, direction)
    fused = kl_topk_sum_fused(states, idx.int(), top16, tail, head, temperature, direction, chunk)
    torch.testing.assert_close(fused, plain)
    (g_plain,) = torch.autograd.grad(0.3 * plain, [states])
    (g_fused,) = torch.autograd.grad(0.3 * fused, [states])
    torch.testing.assert_close(g_fused, g_plain)
    with torch.no_grad():  # validation: the value only
        assert not kl_topk_sum_fused(states, idx, top16, tail, head, temperature, direction, chunk).requires_grad


def test_fused_topk_kl_gradient_by_hand():
    """Identity head, T = 1, student logits (0, 0, ln 2) → p = (1/4, 1/4, 1/2); the teacher keeps token 2
    with t = 0.8, the rest 0.2. Coarse s = (1/2, 1/2), KL(s‖t) = ½ ln(0.5/0.8) + ½ ln(0.5/0.2); d/dz_v =
    p_v (ln(s_c/t_c) − KL): token 2 in the top-k outcome, tokens 0 and 1 in the tail."""
    head = torch.nn.Linear(3, 3, bias=False).requires_grad_(False)
    head.weight.copy_(torch.eye(3))
    z = torch.tensor([[0.0, 0.0, math.log(2)]], requires_grad=True)
    kl = kl_topk_sum_fused(z, torch.tensor([[2]]), torch.tensor([[math.log(0.8)]]), torch.tensor([math.log(0.2)]), head)
    want = 0.5 * math.log(0.5 / 0.8) + 0.5 * math.log(0.5 / 0.2)
    assert kl.item() == pytest.approx(want, abs=1e-6)
    (g,) = torch.autograd.grad(kl, [z])
    top, rest = math.log(0.5 / 0.8) - want, math.log(0.5 / 0.2) - want
    assert g[0].tolist() == pytest.approx([0.25 * rest, 0.25 * rest, 0.5 * top], abs=1e-6)


def test_fused_kl_without_gradient_gives_the_same_value():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 50).requires_grad_(False)
    states, teacher = torch.randn(11, 8, requires_grad=True), torch.randn(11, 8)
    with torch.no_grad():  # validation: the value only
        value = kl_sum_fused(states, teacher, head, 1.0, "finetuned_base", 4)
    assert not value.requires_grad
    torch.testing.assert_close(value, kl_sum(head(states), head(teacher)).detach())
