"""Speculative decoding (draft tokens verified per decode step, e.g. DeepSeek's multi-token
prediction): the tokens a step yields, what a step costs, TPOT and throughput per token, the draft
head's memory, the closed-loop law, derivatives, and the experiment keys.

One jit of ``evaluate`` per (model, draft tokens), shared through module-scoped fixtures."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from jaxplan.serving import decode_worker, evaluate, round_costs, round_time
from jaxplan.specs import SpecError, Workload, load_experiment

K, A = 3, 0.7                      # a common MTP setting: 3 drafted tokens, 70% acceptance each
E_HAND = 1 + A + A ** 2 + A ** 3   # = 2.533 tokens per step
FP8_BYTES = 1.0


def test_tokens_per_step():
    assert Workload(1024.0, 256.0).tokens_per_step == 1.0
    assert float(Workload(1024.0, 256.0, A, K).tokens_per_step) == pytest.approx(E_HAND, rel=1e-6)
    assert float(Workload(1024.0, 256.0, 0.0, K).tokens_per_step) == pytest.approx(1.0)
    assert float(Workload(1024.0, 256.0, 0.5, 1).tokens_per_step) == pytest.approx(1.5)


def test_one_request_tpot_is_the_step_over_the_tokens_it_yields(p, h100, fp8, models, ev, one_replica):
    """Llama-3.1-70B FP8 on one H100, one request: a decode step reads all 70 GB of weights for a
    single token, so verifying 4 tokens costs little more (well under 1.3 x), and the draft head
    adds 3 passes of one layer (1/80 of the weights each); at 70% acceptance the step yields 2.53
    tokens, so TPOT falls by more than 1.8 x. The step is the decode iteration the metrics report;
    TPOT is that over the tokens per step. With every draft rejected, speculation only costs."""
    model = models("llama-3.1-70b")
    lay = one_replica(1, 1)
    base = {k: float(v) for k, v in ev(p, h100, model, fp8, Workload(2048.0, 256.0), lay, "mixed").items()}
    spec = {k: float(v) for k, v in ev(p, h100, model, fp8, Workload(2048.0, 256.0, A, K), lay, "mixed").items()}
    assert spec["decode_iter_s"] < 1.3 * base["decode_iter_s"]
    assert spec["tpot_s"] == pytest.approx(spec["decode_iter_s"] / E_HAND, rel=1e-4)
    assert base["tpot_s"] / spec["tpot_s"] > 1.8
    ops = round_costs(p, h100, model, fp8, Workload(2048.0, 256.0, A, K), lay, jnp.float32(1.0), jnp.float32(0.0))
    assert float(ops["draft"].total()) > 0
    assert float(ops["draft"].total()) < K * 1.5 * base["decode_iter_s"] / model.num_layers + K * 1e-3
    none = {k: float(v) for k, v in ev(p, h100, model, fp8, Workload(2048.0, 256.0, 0.0, K), lay, "mixed").items()}
    assert none["tpot_s"] == pytest.approx(none["decode_iter_s"], rel=1e-4)
    assert none["tpot_s"] > base["tpot_s"]


def test_closed_loop_law_and_throughput_count_tokens(p, h100, fp8, models, ev, one_replica):
    """64 requests of 2048 in / 256 out on Llama-3.1-70B TP4: N = X * (TTFT + OSL * TPOT) holds
    with TPOT per token, and tokens/s/GPU = X * OSL / GPUs; speculation at 70% acceptance raises
    both tokens/s/user and tokens/s/GPU over plain decoding here (decode is memory-bound)."""
    model = models("llama-3.1-70b")
    lay, B, osl = one_replica(4, 64), 64.0, 256.0
    m = {k: float(v) for k, v in ev(p, h100, model, fp8, Workload(2048.0, osl, A, K), lay, "mixed").items()}
    base = {k: float(v) for k, v in ev(p, h100, model, fp8, Workload(2048.0, osl), lay, "mixed").items()}
    assert m["requests_per_s"] * (m["ttft_s"] + osl * m["tpot_s"]) == pytest.approx(B, rel=2e-3)
    assert m["tokens_per_s_per_gpu"] == pytest.approx(m["requests_per_s"] * osl / 4, rel=1e-5)
    assert m["tokens_per_s_per_user"] > base["tokens_per_s_per_user"]
    assert m["tokens_per_s_per_gpu"] > base["tokens_per_s_per_gpu"]


def test_draft_head_holds_one_more_layer_of_weights(p, h100, fp8, models, ev, one_replica):
    """The draft head is one layer shaped like the model's own: on one GPU the memory grows by
    exactly one Llama-3.1-70B layer's weights (attention + MLP parameters, 1 byte each at FP8)."""
    model = models("llama-3.1-70b")
    lay = one_replica(1, 1)
    a = float(ev(p, h100, model, fp8, Workload(2048.0, 256.0), lay, "mixed")["memory_per_gpu_gb"])
    b = float(ev(p, h100, model, fp8, Workload(2048.0, 256.0, A, K), lay, "mixed")["memory_per_gpu_gb"])
    layer_gb = (model.attention_params() + model.dense_mlp_params()) * FP8_BYTES / 1e9
    assert b - a == pytest.approx(layer_gb, rel=1e-3)


def test_decode_worker_tpot_and_rate(p, h100, fp8, models, one_replica):
    """A disaggregated decode worker of 32 requests: TPOT = its step / tokens per step, and its
    request rate = batch / (OSL * TPOT)."""
    model = models("llama-3.1-70b")
    wl, lay = Workload(2048.0, 256.0, A, K), one_replica(4, 32)
    w = jax.jit(decode_worker, static_argnums=(2, 3))(p, h100, model, fp8, wl, lay)
    step = float(jax.jit(round_time, static_argnums=(2, 3))(p, h100, model, fp8, wl, lay, jnp.float32(32.0),
                                                            jnp.float32(0.0)))
    assert float(w["tpot_s"]) == pytest.approx(step / E_HAND, rel=1e-5)
    assert float(w["rate"]) == pytest.approx(32.0 / (256.0 * float(w["tpot_s"])), rel=1e-5)


def test_tpot_falls_with_acceptance_exactly_as_the_tokens_per_step_rise(p, h100, fp8, models, one_replica):
    """At one request the step does not depend on the acceptance, so d log TPOT / d log a =
    -d log E / d log a = -(a + 2a^2 + 3a^3) / (1 + a + a^2 + a^3) (= -1.10 at a = 0.7)."""
    model = models("llama-3.1-70b")
    lay = one_replica(1, 1)

    def log_tpot(log_a):
        wl = Workload(jnp.float32(2048.0), jnp.float32(256.0), jnp.exp(log_a), K)
        return jnp.log(evaluate(p, h100, model, fp8, wl, lay)["tpot_s"])
    g = float(jax.grad(log_tpot)(jnp.log(jnp.float32(A))))
    hand = -(A + 2 * A ** 2 + 3 * A ** 3) / E_HAND
    assert g == pytest.approx(hand, rel=2e-3)


EXPERIMENT = """name: spec
model: llama-3.1-70b
hardware: h100-sxm
gpus: 8
precision: fp8
workload:
  isl_tokens: 2048
  osl_tokens: 256
"""


def test_experiment_keys_and_their_errors(tmp_path):
    path = tmp_path / "e.yaml"
    path.write_text(EXPERIMENT + "speculative:\n  draft_tokens: 3\n  acceptance: 0.7\n")
    wl = load_experiment(path).workload
    assert (wl.draft_tokens, wl.acceptance) == (3, 0.7)
    wl = load_experiment(path, draft_tokens=1, acceptance=0.5).workload
    assert (wl.draft_tokens, wl.acceptance) == (1, 0.5)
    path.write_text(EXPERIMENT)
    wl = load_experiment(path).workload
    assert (wl.draft_tokens, wl.acceptance) == (0, 0.0)
    for text, words in (("  acceptance: 1.2\n", ("acceptance", "[0, 1)", "e.yaml")),
                        ("  draft_tokens: 2.5\n", ("draft_tokens", "whole number")),
                        ("  draft_tokens: 40\n", ("draft_tokens", "16")),
                        ("  drafts: 3\n", ("drafts", "allowed keys", "acceptance"))):
        path.write_text(EXPERIMENT + "speculative:\n" + text)
        with pytest.raises(SpecError) as e:
            load_experiment(path)
        for w in words:
            assert w in str(e.value), (w, str(e.value))
