"""GRPO's pieces against hand-computed values: group advantages, the clipped loss and its KL term, the
reward terms on crafted hypotheses, the temperature schedule and the configs' errors."""

from __future__ import annotations

import math

import pytest
import torch

from entropy_asr.errors import UserError
from entropy_asr.model.grpo import (
    GRPOConfig,
    RewardConfig,
    group_advantages,
    group_rewards,
    grpo_loss,
    kl_k3,
    reward,
    temperature_at,
    token_logprobs,
)

# ---- group advantages ----


def test_group_advantages_hand_computed_population_std():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.5, 0.5, 0.5, 2.5]])
    # row 0: mean 0.5, population std sqrt(4 * 0.25 / 4) = 0.5 -> +-0.5 / 0.5 = +-1
    #        (the sample std, sqrt(1 / 3) = 0.577, would give +-0.866)
    # row 1: mean 1.0, deviations (-0.5, -0.5, -0.5, 1.5), variance (3 * 0.25 + 2.25) / 4 = 0.75, std sqrt(3) / 2
    s = math.sqrt(3) / 2
    expected = torch.tensor([[1.0, -1.0, -1.0, 1.0], [-0.5 / s, -0.5 / s, -0.5 / s, 1.5 / s]])
    torch.testing.assert_close(group_advantages(rewards, eps=0.0), expected, rtol=1e-6, atol=1e-6)
    # the default eps only shifts them by ~eps / std
    torch.testing.assert_close(group_advantages(rewards), expected, rtol=1e-5, atol=1e-5)


def test_group_with_equal_rewards_gets_zero_advantages():
    rewards = torch.tensor([[0.1, 0.1, 0.1, 0.1], [math.exp(-0.5)] * 4, [1.0, 1.0, 0.0, 0.0]])
    adv = group_advantages(rewards)
    assert not adv.isnan().any()
    assert torch.equal(adv[:2], torch.zeros(2, 4))  # exactly 0, not rounding noise / eps
    assert adv[2].abs().sum() > 0
    assert not group_advantages(rewards, eps=0.0).isnan().any()


# ---- the loss ----

CFG = GRPOConfig(group_size=2, clip_eps=0.2, kl_beta=0.04)


def test_loss_equals_minus_mean_advantage_and_kl_is_zero_when_policies_agree():
    torch.manual_seed(0)
    logp = -torch.rand(3, 5) * 3
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0], [1, 0, 0, 0, 0]], dtype=torch.bool)
    adv = torch.tensor([0.5, -1.5, 2.0])
    loss, stats = grpo_loss(logp.clone().requires_grad_(), logp.clone(), logp.clone(), adv, mask, CFG)
    assert stats["kl"].item() == 0.0  # k3 at pi = pi_ref is exactly 0
    assert torch.equal(kl_k3(logp, logp), torch.zeros_like(logp))
    # ratio 1, so each token's term is -A; per-sequence means are -A; their mean is -mean(A) = -1/3
    torch.testing.assert_close(loss, torch.tensor(-(0.5 - 1.5 + 2.0) / 3))
    assert stats["clip_fraction"].item() == 0.0 and stats["ratio_mean"].item() == 1.0


def test_ratio_clipping_hand_computed():
    # one token per sequence; logp - old_logp = log(ratio); the reference equals the policy (no KL)
    ratios = torch.tensor([1.5, 0.5, 1.5, 0.5])
    adv = torch.tensor([1.0, -1.0, -1.0, 1.0])
    old = torch.full((4, 1), -2.0)
    logp = (old + ratios.log().unsqueeze(-1)).requires_grad_()
    mask = torch.ones(4, 1, dtype=torch.bool)
    loss, stats = grpo_loss(logp, old, logp.detach().clone(), adv, mask, CFG)
    # min(r A, clip(r, 0.8, 1.2) A):
    #   r 1.5, A +1: min(1.5, 1.2) = 1.2 (clipped)     r 0.5, A -1: min(-0.5, -0.8) = -0.8 (clipped)
    #   r 1.5, A -1: min(-1.5, -1.2) = -1.5 (not)       r 0.5, A +1: min(0.5, 0.8) = 0.5 (not)
    # loss = -(1.2 - 0.8 - 1.5 + 0.5) / 4 = 0.15
    torch.testing.assert_close(loss, torch.tensor(0.15))
    assert stats["clip_fraction"].item() == 0.5
    torch.testing.assert_close(stats["ratio_mean"], torch.tensor(1.0))
    loss.backward()
    # clipped tokens get no gradient; the others d/dlogp (-r A / 4) = -r A / 4 (d r / d logp = r)
    torch.testing.assert_close(logp.grad, torch.tensor([[0.0], [0.0], [1.5 / 4], [-0.5 / 4]]))


def test_kl_term_hand_computed():
    # ref_logp - logp = log 2: k3 = 2 - log 2 - 1 = 1 - log 2 per token; ratio 1 so the policy part is -A
    logp = torch.tensor([[-1.0, -2.0]])
    ref = logp + math.log(2)
    mask = torch.ones(1, 2, dtype=torch.bool)
    cfg = GRPOConfig(kl_beta=0.5)
    loss, stats = grpo_loss(logp.clone().requires_grad_(), logp, ref, torch.tensor([0.25]), mask, cfg)
    torch.testing.assert_close(stats["kl"], torch.tensor(1 - math.log(2)))
    torch.testing.assert_close(loss, torch.tensor(-0.25 + 0.5 * (1 - math.log(2))))


def test_sequences_average_their_own_tokens_first():
    # seq 0: 1 token of term a, seq 1: 3 tokens; eq. 3 averages per sequence, then over sequences
    logp = torch.zeros(2, 3)
    mask = torch.tensor([[1, 0, 0], [1, 1, 1]], dtype=torch.bool)
    loss, _ = grpo_loss(logp.requires_grad_(), logp.detach(), logp.detach(), torch.tensor([3.0, 1.0]), mask, CFG)
    torch.testing.assert_close(loss, torch.tensor(-(3.0 + 1.0) / 2))  # token-mean would give -(3 + 3) / 4


def test_masked_tokens_contribute_nothing():
    torch.manual_seed(1)
    logp, old, ref = (-torch.rand(2, 6) * 4 for _ in range(3))
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.bool)
    adv = torch.tensor([1.0, -0.5])
    lp = logp.clone().requires_grad_()
    base, base_stats = grpo_loss(lp, old, ref, adv, mask, CFG)
    base.backward()
    garbage = lambda x: torch.where(mask, x, torch.tensor([float("nan"), float("-inf"), 50.0]).repeat(4)[:6])
    lp2 = garbage(logp).requires_grad_()
    loss, stats = grpo_loss(lp2, garbage(old), garbage(ref), adv, mask, CFG)
    loss.backward()
    assert torch.equal(loss, base) and all(torch.equal(stats[k], base_stats[k]) for k in stats)
    assert torch.equal(lp2.grad, lp.grad) and torch.equal(lp.grad[~mask], torch.zeros(int((~mask).sum())))
    # a sequence without tokens is left out of the mean over sequences
    mask3 = torch.cat([mask, torch.zeros(1, 6, dtype=torch.bool)])
    cat = lambda x: torch.cat([x, torch.full((1, 6), -1.0)])
    loss3, _ = grpo_loss(cat(logp), cat(old), cat(ref), torch.tensor([1.0, -0.5, 9.0]), mask3, CFG)
    torch.testing.assert_close(loss3, base.detach())


def test_gradient_flows_to_logp_only():
    torch.manual_seed(2)
    logp, old, ref = (-torch.rand(2, 4).requires_grad_() for _ in range(3))
    logp.retain_grad(), old.retain_grad(), ref.retain_grad()
    adv = torch.tensor([1.0, -1.0], requires_grad=True)
    loss, stats = grpo_loss(logp, old, ref, adv, torch.ones(2, 4, dtype=torch.bool), CFG)
    loss.backward()
    assert logp.grad is not None and logp.grad.abs().sum() > 0
    assert old.grad is None and ref.grad is None and adv.grad is None
    assert not any(v.requires_grad for v in stats.values())


def test_k3_is_nonnegative():
    torch.manual_seed(3)
    logp, ref = -torch.rand(1000) * 10, -torch.rand(1000) * 10
    k = kl_k3(logp, ref)
    assert (k >= 0).all() and (k > 0).any()


def test_token_logprobs_match_log_softmax_and_skip_ignored():
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 7)
    tokens = torch.tensor([[1, 6, -100], [0, 2, 3]])
    out = token_logprobs(logits, tokens, temperature=0.7)
    ref = torch.log_softmax(logits / 0.7, -1)
    assert out[0, 2].item() == 0.0
    torch.testing.assert_close(out[1], ref[1, [0, 1, 2], [0, 2, 3]])
    torch.testing.assert_close(out[0, :2], ref[0, [0, 1], [1, 6]])


# ---- rewards ----


def test_exact_and_one_error_in_four_words():
    r = reward("the cat sat down", "The cat sat down.", "en")
    assert r == {"total": 1.0, "accuracy": 1.0, "hallucination": 0.0, "nonspeech": 0.0, "context": 0.0}
    r = reward("the cat sat down", "the dog sat down", "en")  # 1 substitution / 4 words -> exp(-2 / 4)
    assert r["accuracy"] == pytest.approx(math.exp(-0.5)) and r["total"] == pytest.approx(math.exp(-0.5))
    assert reward("the cat sat down", "the dog sat down", "en", RewardConfig(accuracy_scale=1.0))["accuracy"] \
        == pytest.approx(math.exp(-0.25))


def test_length_hallucination():
    ref = "the cat sat down"
    long = reward(ref, " ".join(["the cat sat down"] * 3), "en")  # 12 words for 4: 3x, 8 insertions
    assert long["hallucination"] == -1.0
    assert long["accuracy"] == pytest.approx(math.exp(-2 * 8 / 4))
    assert long["total"] == pytest.approx(math.exp(-4) - 1)
    ten = "red green blue cyan black white pink gray brown gold"  # (number words would be normalized to digits)
    short = reward(ten, "red green blue", "en")  # 0.3x: 7 deletions of 10
    assert short["hallucination"] == -1.0 and short["accuracy"] == pytest.approx(math.exp(-1.4))
    # the bounds are strict: exactly 2x and exactly 0.5x are not penalized
    assert reward(ref, "the cat sat down the cat sat down", "en")["hallucination"] == 0.0
    assert reward(ref, "the cat", "en")["hallucination"] == 0.0
    assert reward(ref, "the", "en")["hallucination"] == -1.0
    assert reward(ref, " ".join(["the cat sat down"] * 3), "en",
                  RewardConfig(hallucination_penalty=0.5))["hallucination"] == -0.5


def test_nonspeech_clip():
    # a filler the evaluation normalizer drops ("uh") is no output, as in evaluation's nonspeech_emission_rate
    assert reward("", "uh", "none")["total"] == 1.0
    assert reward("", "", "none") == {"total": 1.0, "accuracy": 1.0, "hallucination": 0.0, "nonspeech": 0.0,
                                      "context": 0.0}
    for hyp in ("谢谢观看", "thank you"):
        r = reward("", hyp, "none")
        assert r["nonspeech"] == -1.0 and r["accuracy"] == 0.0 and r["total"] == -1.0
    assert reward("", "okay", "none", RewardConfig(nonspeech_penalty=2.0))["total"] == -2.0


def test_mandarin_uses_characters_and_mix_uses_mixed_units():
    # 今天天[气->汽]很好: 1 of 6 characters (as one word it would be 1 of 1)
    assert reward("今天天气很好", "今天天汽很好", "zh")["accuracy"] == pytest.approx(math.exp(-2 / 6))
    # 我 们 明 天 去 office 开 会: 8 units; [明->今] is 1 of them, and "OFFICE" matches after normalization
    r = reward("我们明天去Office开会", "我们今天去OFFICE开会！", "mix")
    assert r["accuracy"] == pytest.approx(math.exp(-2 / 8))
    # [office -> offices]: one English word is one unit, not six characters
    assert reward("我们明天去office开会", "我们明天去offices开会", "mix")["accuracy"] == pytest.approx(math.exp(-2 / 8))
    # length in units too: 3 characters for 8 units is under 0.5x
    assert reward("我们明天去office开会", "我们明", "mix")["hallucination"] == -1.0


def test_context_term():
    cfg = RewardConfig(context_weight=0.5)
    ref = "please call doctor smith at the hospital"
    present, absent = ["doctor smith", "hospital"], ["nurse jones", "clinic"]
    exact = reward(ref, ref, "en", cfg, present, absent)
    assert exact["context"] == pytest.approx(0.5 * (2 / 2 - 0)) and exact["total"] == pytest.approx(1.5)
    # "doctor smyth": one of 2 hotwords recalled; "clinic" is one of 2 distractors inserted
    hyp = "please call doctor smyth at the hospital clinic"
    r = reward(ref, hyp, "en", cfg, present, absent)
    assert r["context"] == pytest.approx(0.5 * (1 / 2 - 1 / 2))
    r = reward(ref, "please call nurse jones at the clinic", "en", cfg, present, absent)
    assert r["context"] == pytest.approx(0.5 * (0 - 1))
    # a "distractor" the reference itself says is not an insertion
    assert reward(ref, ref, "en", cfg, (), ["hospital", "clinic"])["context"] == 0.0
    # Mandarin hotwords match as character runs; off by default and without hotwords
    assert reward("我在北京工作", "我在背景工作", "zh", cfg, ["北京"])["context"] == 0.0
    assert reward("我在北京工作", "我在北京工作", "zh", cfg, ["北京"])["context"] == 0.5
    assert reward(ref, ref, "en", RewardConfig(), present, absent)["context"] == 0.0
    with pytest.raises(UserError, match="hotword"):
        reward(ref, ref, "en", cfg, ["!!"])


def test_group_rewards_shape_and_means():
    rewards, means = group_rewards(["a b c d", ""], [["a b c d", "a x c d"], ["", "hello"]], ["en", "none"])
    torch.testing.assert_close(rewards, torch.tensor([[1.0, math.exp(-0.5)], [1.0, -1.0]]))
    assert means["nonspeech"] == -0.25 and means["total"] == pytest.approx((1 + math.exp(-0.5)) / 4)
    with pytest.raises(ValueError, match="same number"):
        group_rewards(["a", "b"], [["a"], ["b", "c"]], ["en", "en"])


# ---- schedule and configs ----


def test_temperature_schedule():
    cfg = GRPOConfig()
    assert temperature_at(0, 100, cfg) == 1.0
    assert temperature_at(50, 100, cfg) == pytest.approx(0.85)
    assert temperature_at(100, 100, cfg) == pytest.approx(0.7)
    assert temperature_at(150, 100, cfg) == pytest.approx(0.7)  # held after the end
    with pytest.raises(UserError, match="max_steps"):
        temperature_at(0, 0, cfg)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"group_size": 1}, "grpo.group_size"), ({"clip_eps": 0.0}, "grpo.clip_eps"),
    ({"clip_eps": -0.1}, "grpo.clip_eps"), ({"kl_beta": -0.01}, "grpo.kl_beta"),
    ({"temperature_end": 0.0}, "grpo.temperature_end")])
def test_grpo_config_errors_name_the_field(kwargs, field):
    with pytest.raises(UserError, match=field):
        GRPOConfig(**kwargs)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"accuracy_scale": 0.0}, "reward.accuracy_scale"), ({"length_low": 1.5}, "reward.length_low"),
    ({"length_high": 0.9}, "reward.length_high"), ({"context_weight": -1.0}, "reward.context_weight"),
    ({"hallucination_penalty": -1.0}, "reward.hallucination_penalty")])
def test_reward_config_errors_name_the_field(kwargs, field):
    with pytest.raises(UserError, match=field):
        RewardConfig(**kwargs)
