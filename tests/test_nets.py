"""Where an off-policy agent's encoder lives (`nets.ROUTINGS`), checked on the real SAC and TD3 learners with a
small encoder that has parameters (a Dense layer on the flattened goal dict; the pixel encoders plug in the same
way). The book's ch9 `--verify` checks: with the critic routing no encoder parameter is in the actor's tree or
optimiser, the critic loss moves the encoder and the actor loss does not, and the target critic has its own
encoder copy; with the separate routing (SB3's default) each network trains its own encoder."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fetchjax import encoders
from fetchjax.agents import her, nets, offpolicy, sac, td3

from tests.test_sac import SPEC, _batch, _obs  # random Reach goal dicts and batches


class DenseEncoder(nn.Module):
  """A parametric stand-in for a pixel encoder: flatten the goal dict, Dense(8), tanh."""

  @nn.compact
  def __call__(self, obs):
    return jnp.tanh(nn.Dense(8)(encoders.flatten_obs(obs)))


@pytest.fixture
def dense_encoder(monkeypatch):
  real = encoders.make
  monkeypatch.setattr(encoders, "ENCODERS", (*encoders.ENCODERS, "dense"))
  monkeypatch.setattr(encoders, "make", lambda name: DenseEncoder() if name == "dense" else real(name))


def _changed(a, b) -> bool:
  return any(not np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


ALGOS = {"sac": (sac, sac.SACConfig), "td3": (td3, td3.TD3Config)}


@pytest.mark.parametrize("algo", list(ALGOS))
def test_critic_routing_trains_the_encoder_by_the_critic_loss_only(dense_encoder, algo):
  module, config_cls = ALGOS[algo]
  cfg = config_cls(hidden_sizes=(16, 16), encoder="dense", encoder_routing="critic",
                   **({"policy_delay": 1} if algo == "td3" else {}))
  learner = module.make_learner(cfg, SPEC, 4)
  ts = learner.init(jax.random.PRNGKey(0))
  # the encoder is in the critic's tree (and so in its optimiser state and in the target), not in the actor's
  assert "encoder" in ts.critic_params["params"] and "encoder" in ts.target_critic_params["params"]
  assert "encoder" not in str(jax.tree_util.tree_structure(ts.actor_params))
  assert "encoder" not in str(jax.tree_util.tree_structure(ts.actor_opt_state))
  batch = _batch(jax.random.PRNGKey(1), 32)
  new, _ = jax.jit(learner.update)(ts, batch, jax.random.PRNGKey(2), 0)
  assert _changed(new.actor_params, ts.actor_params)
  enc = lambda p: p["params"]["encoder"]  # noqa: E731
  # the actor's input carries no gradient to the encoder (and the actor loss is differentiated w.r.t. the actor's
  # own parameters, which do not include it); the critic loss does move the encoder
  target_q = jnp.zeros(32)  # any target
  g_actor = jax.grad(lambda cp: jnp.sum(learner.actor.apply(
      new.actor_params, nets.actor_input(learner.critic, "critic")(cp, batch.obs))[0]))(ts.critic_params)
  assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(enc(g_actor)))  # stop_gradient
  _, _, critic_only, _ = offpolicy.critic_step(learner.critic, learner.critic_tx,
                                                lambda qs, y: sum(jnp.mean(jnp.square(q - y)) for q in qs),
                                                ts.critic_params, ts.critic_opt_state, batch, target_q)
  assert _changed(enc(critic_only), enc(ts.critic_params))  # the critic loss has encoder gradients
  assert _changed(enc(new.critic_params), enc(ts.critic_params))
  # the target critic's encoder is its own copy, Polyak-averaged toward the online one
  online, target_before, target = (np.asarray(jax.tree.leaves(enc(p))[0]) for p in
                                   (new.critic_params, ts.target_critic_params, new.target_critic_params))
  np.testing.assert_allclose(target, (1 - cfg.tau) * target_before + cfg.tau * online, rtol=1e-5, atol=1e-7)
  # acting reads the critic's encoder: the policy carries it, and a different encoder changes the action
  pol = offpolicy.policy_of(cfg, offpolicy.RunnerState(new, None, None, None))
  assert set(pol) == {"actor_params", "critic_encoder"}
  act = module.make_act(cfg)
  obs = _obs(jax.random.PRNGKey(3), 5)
  a = act(pol, obs)
  other = dict(pol, critic_encoder=jax.tree.map(lambda x: x + 0.5, pol["critic_encoder"]))
  assert a.shape == (5, 4) and not np.allclose(np.asarray(act(other, obs)), np.asarray(a))


def test_separate_routing_gives_each_network_its_own_encoder(dense_encoder):
  cfg = sac.SACConfig(hidden_sizes=(16, 16), encoder="dense", encoder_routing="separate")
  learner = sac.make_learner(cfg, SPEC, 4)
  ts = learner.init(jax.random.PRNGKey(0))
  a_enc, c_enc = ts.actor_params["params"]["encoder"], ts.critic_params["params"]["encoder"]
  new, _ = jax.jit(learner.update)(ts, _batch(jax.random.PRNGKey(1), 32), jax.random.PRNGKey(2), 0)
  assert _changed(new.actor_params["params"]["encoder"], a_enc)   # trained by the actor loss
  assert _changed(new.critic_params["params"]["encoder"], c_enc)  # trained by the critic loss
  assert offpolicy.policy_of(cfg, offpolicy.RunnerState(new, None, None, None)).keys() == {"actor_params"}


@pytest.mark.parametrize("algo", list(ALGOS))
def test_with_a_parameter_free_encoder_the_routings_compute_the_same_update(algo):
  """The state encoder has no parameters, so where it lives changes nothing (bit for bit)."""
  module, config_cls = ALGOS[algo]
  out = []
  for routing in nets.ROUTINGS:
    learner = module.make_learner(config_cls(hidden_sizes=(16, 16), encoder_routing=routing), SPEC, 4)
    ts = learner.init(jax.random.PRNGKey(0))
    new, info = jax.jit(learner.update)(ts, _batch(jax.random.PRNGKey(1), 32), jax.random.PRNGKey(2), 0)
    out.append(jax.tree.leaves((new, info)))
  for x, y in zip(*out):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_bad_encoder_settings_are_one_line_errors():
  with pytest.raises(ValueError, match="encoder_routing must be one of separate, critic, got 'actor'"):
    sac.SACConfig(encoder_routing="actor")
  with pytest.raises(ValueError, match="unknown encoder 'cnn'; available: flat, manipulation, nature"):
    td3.TD3Config(encoder="cnn")
  with pytest.raises(ValueError, match=r"encoder 'manipulation' reads the observation key\(s\) \['pixels'\], which "
                                       "this env does not provide"):
    sac.make_learner(sac.SACConfig(encoder="manipulation"), SPEC, 4)


def test_a_pixel_encoder_in_the_critic_tree(monkeypatch):
  """The book's ch9 configuration as a config: ManipulationExtractor owned by the critic (CNN, SpatialSoftmax
  temperature and LayerNorm in the critic's tree and the target's), the actor on 80 features, none of it in the
  actor's tree; one update runs and moves the critic's encoder."""
  spec = {"pixels": jax.ShapeDtypeStruct((84, 84, 12), jnp.uint8),
          "proprioception": jax.ShapeDtypeStruct((10,), jnp.float32), **{k: SPEC[k] for k in her.GOAL_KEYS}}
  cfg = sac.SACConfig(hidden_sizes=(16, 16), encoder="manipulation", encoder_routing="critic")
  learner = sac.make_learner(cfg, spec, 4)
  ts = jax.jit(learner.init)(jax.random.PRNGKey(0))
  enc = ts.critic_params["params"]["encoder"]
  assert {"cnn", "spatial_softmax"} <= set(enc) and "encoder" in ts.target_critic_params["params"]
  assert ts.actor_params["params"]["latent_pi"]["dense_0"]["kernel"].shape == (80, 16)
  assert "encoder" not in str(jax.tree_util.tree_structure(ts.actor_params))
  obs = lambda k: {**offpolicy.obs_zeros(spec, 8),  # noqa: E731
                   "pixels": jax.random.randint(k, (8, 84, 84, 12), 0, 256).astype(jnp.uint8)}
  k = jax.random.split(jax.random.PRNGKey(1), 3)
  batch = offpolicy.Batch(obs(k[0]), jax.random.uniform(k[1], (8, 4), minval=-1, maxval=1), -jnp.ones(8), obs(k[2]),
                          jnp.zeros(8))
  new, info = jax.jit(learner.update)(ts, batch, jax.random.PRNGKey(2), 0)
  assert np.isfinite(float(info["critic_loss"])) and _changed(new.critic_params["params"]["encoder"], enc)
