"""Deliberate single-line bugs in the behaviours that matter most, each of which some test must catch.

    python scripts/mutation_check.py                    # every mutation (~30-45 min on 2 CPU cores)
    python scripts/mutation_check.py --only ppo_bootstrap_dropped,her_future_offset
    python scripts/mutation_check.py --list             # the curated list, nothing run
    python scripts/mutation_check.py --json-out mutation_report.json

For each mutation: copy the working tree (git's tracked and untracked-not-ignored files) to a temporary directory,
replace the ORIGINAL snippet of FILE by the MUTATED one (it must occur exactly once, else the script stops: the
list has gone stale), check that the file still compiles, then run only the named tests there with a timeout
(`python -m pytest -x`, PYTHONPATH = the copy). The mutation is KILLED if pytest reports a failure (exit 1) or a
collection error (exit 2), SURVIVED if the tests pass, and anything else (timeout, no tests collected, usage
error) is reported as such and counts as not killed. Before the mutations, the named tests run once on the
unmutated copy and must pass (else nothing can be concluded). A JAX compilation cache shared by the runs keeps
unchanged programs (the MJX step) from being recompiled for every mutation.

Exit status: 0 when every mutation whose tests exist here is killed, 1 otherwise (2 for a stale list).
A mutation may name tests that another issue adds (`needs`): where those test files are missing it is reported as
"no tests here" and does not count in the score.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class Mutation:
  id: str
  what: str          # the behaviour broken, in words
  file: str          # path relative to the repository root
  original: str      # exact snippet (must occur once)
  mutated: str
  tests: tuple[str, ...]  # pytest arguments: node ids, files, or "-k" expressions
  needs: str = ""    # the issue whose tests are expected to kill it, if they are not on this branch


def M(id, what, file, original, mutated, *tests, needs=""):  # noqa: N802
  return Mutation(id, what, file, original, mutated, tuple(tests), needs)


GOAL, FETCH, CPU, MJX = "fetchjax/envs/goal.py", "fetchjax/envs/fetch.py", "fetchjax/envs/cpu_backend.py", \
    "fetchjax/envs/mjx_backend.py"
PPO, HER, SAC, TD3, TRAIN = "fetchjax/agents/ppo.py", "fetchjax/agents/her.py", "fetchjax/agents/sac.py", \
    "fetchjax/agents/td3.py", "fetchjax/train.py"
OFFPOLICY, NETS, DRQ = "fetchjax/agents/offpolicy.py", "fetchjax/agents/nets.py", "fetchjax/agents/drq.py"
CKPT = "fetchjax/checkpoints.py"
EVAL, POLICY, DIAG = "fetchjax/eval.py", "fetchjax/policy.py", "fetchjax/diagnostics.py"
PIXELS = "fetchjax/envs/pixels.py"
CPU_ROLLOUTS = "tests/test_parity_cpu.py::test_multi_episode_rollouts_match_gymnasium"
SB3_COLLECT = "tests/test_sb3_parity.py::test_collected_rollout_matches_sb3"

MUTATIONS = [
    # --- rewards and success -----------------------------------------------------------------------------
    M("reward_sparse_operator", "sparse reward -(d >= eps) instead of -(d > eps)", GOAL,
      "return -(d > distance_threshold).astype(jnp.float32)", "return -(d >= distance_threshold).astype(jnp.float32)",
      "tests/test_goal.py"),
    M("reward_dense_squared", "dense reward -d^2 instead of -d", GOAL,
      "  if reward_type == \"dense\":\n    return -d", "  if reward_type == \"dense\":\n    return -d * d",
      "tests/test_goal.py"),
    M("success_threshold", "success d <= eps instead of d < eps", GOAL,
      "return (d < distance_threshold).astype(jnp.float32)", "return (d <= distance_threshold).astype(jnp.float32)",
      "tests/test_goal.py"),
    # --- resets --------------------------------------------------------------------------------------------
    M("autoreset_block_xy_other_env", "auto-reset puts another env's block position into each env", FETCH,
      "self.backend.step(state.pipeline_state, action, done, new_xy)",
      "self.backend.step(state.pipeline_state, action, done, new_xy[::-1])", CPU_ROLLOUTS),
    M("autoreset_goal_other_env", "auto-reset gives each env another env's goal", FETCH,
      "goal_next = jnp.where(done[:, None], new_goal, desired)",
      "goal_next = jnp.where(done[:, None], new_goal[::-1], desired)", CPU_ROLLOUTS),
    M("autoreset_goal_not_refreshed", "the goal is never resampled at auto-reset", FETCH,
      "goal_next = jnp.where(done[:, None], new_goal, desired)", "goal_next = desired",
      "tests/test_env_api.py::test_scan_autoreset_draws_fresh_goals"),
    M("cpu_reset_xy_thread_chunk", "C backend: auto-reset uses the first xy of each thread's chunk", CPU,
      "        if mask[i]:\n          self._reset_into(d, xy[i])",
      "        if mask[i]:\n          self._reset_into(d, xy[idx[0]])", CPU_ROLLOUTS),
    M("mjx_no_physics_reset", "MJX backend: the reset observation is returned but the physics is not reset", MJX,
      "return jax.tree_util.tree_map(pick, d_r, d), pick(obs_r, obs), pick(ag_r, ag)",
      "return d, pick(obs_r, obs), pick(ag_r, ag)",
      "tests/test_mjx_parity.py::test_reach_rollout_matches_c_mujoco"),
    # --- observation scaling -------------------------------------------------------------------------------
    M("cpu_obs_velocity_no_dt", "C backend: observation velocities without * dt", CPU,
      "vel = np.einsum(\"nkjv,nv->nkj\", buf[\"jac\"], buf[\"qvel\"]) * dt",
      "vel = np.einsum(\"nkjv,nv->nkj\", buf[\"jac\"], buf[\"qvel\"])", CPU_ROLLOUTS),
    M("cpu_finger_velocity_no_dt", "C backend: finger velocities without * dt", CPU,
      "parts += [grip_velp, buf[\"fv\"] * dt]", "parts += [grip_velp, buf[\"fv\"]]", CPU_ROLLOUTS),
    M("mjx_grip_velocity_no_dt", "MJX backend: gripper velocity without * dt", MJX,
      "grip_velp = jacp.T @ d.qvel * dt", "grip_velp = jacp.T @ d.qvel",
      "tests/test_mjx_parity.py::test_reach_rollout_matches_c_mujoco"),
    M("mjx_finger_velocity_no_dt", "MJX backend: finger velocities without * dt", MJX,
      "gripper_state, gripper_vel = d.qpos[self._fq], d.qvel[self._fv] * dt",
      "gripper_state, gripper_vel = d.qpos[self._fq], d.qvel[self._fv]",
      "tests/test_mjx_parity.py::test_reach_rollout_matches_c_mujoco"),
    M("mjx_object_angular_velocity_no_dt", "MJX backend: block angular velocity without * dt", MJX,
      "obj_velr = jacr_o.T @ d.qvel * dt", "obj_velr = jacr_o.T @ d.qvel",
      "tests/test_mjx_parity.py::test_observation_assembly_from_c_states"),
    M("mjx_object_velocity_not_relative", "MJX backend: block linear velocity not relative to the gripper", MJX,
      "obj_velp = jacp_o.T @ d.qvel * dt - grip_velp", "obj_velp = jacp_o.T @ d.qvel * dt",
      "tests/test_mjx_parity.py::test_observation_assembly_from_c_states"),
    # --- PPO: bootstrapping, log-probs, GAE ------------------------------------------------------------------
    M("ppo_bootstrap_dropped", "PPO: no r += gamma V(final_obs) at truncation", PPO,
      "reward = bootstrap_truncation(env_state.reward, trunc, final_value, c.gamma)", "reward = env_state.reward",
      SB3_COLLECT),
    M("ppo_bootstrap_from_reset_obs", "PPO: bootstraps from the next episode's first obs, not final_obs", PPO,
      "prep(rms, env_state.info[\"final_obs\"])", "prep(rms, env_state.obs)", SB3_COLLECT),
    M("ppo_logprob_of_clipped_action", "PPO: stores the log-prob of the clipped action", PPO,
      "    log_prob = gaussian_log_prob(action, mean, log_std)\n    env_state",
      "    log_prob = gaussian_log_prob(jnp.clip(action, -1.0, 1.0), mean, log_std)\n    env_state", SB3_COLLECT),
    M("ppo_stores_clipped_action", "PPO: stores (and scores) the clipped action", PPO,
      "    action = mean + jnp.exp(log_std) * eps\n",
      "    action = jnp.clip(mean + jnp.exp(log_std) * eps, -1.0, 1.0)\n", SB3_COLLECT),
    M("ppo_gae_episode_starts", "PPO GAE: episode_starts used as the step's own done flags", PPO,
      "  next_non_terminal = 1.0 - dones\n",
      "  next_non_terminal = 1.0 - jnp.concatenate([jnp.zeros_like(dones[:1]), dones[:-1]])\n",
      "tests/test_ppo.py", "tests/test_sb3_parity.py"),
    M("ppo_value_loss_half", "PPO: value loss 0.5 * MSE (the book lab's) instead of SB3's MSE", PPO,
      "return jnp.mean(jnp.square(returns - values))", "return 0.5 * jnp.mean(jnp.square(returns - values))",
      "tests/test_ppo.py"),
    M("ppo_advantage_std_ddof0", "PPO: advantage normalisation with ddof 0", PPO,
      "jnp.std(adv, ddof=1)", "jnp.std(adv)", "tests/test_ppo.py"),
    # --- HER -------------------------------------------------------------------------------------------------
    M("her_future_offset", "HER: relabels with ag_t' instead of ag_{t'+1}", HER,
      "new_goal = buf.achieved_goal[ep_v, t_goal + 1]", "new_goal = buf.achieved_goal[ep_v, t_goal]",
      "tests/test_her.py"),
    M("her_future_exclusive", "HER future: t' > t (book lab) where SB3 draws t' >= t", HER,
      "lo = t if future_inclusive else", "lo = t + 1 if future_inclusive else", "tests/test_her.py"),
    M("her_reward_not_recomputed_on_next", "HER: relabelled reward from obs ag_t, not next_obs ag_{t+1}", HER,
      "compute_reward(next_obs[\"achieved_goal\"][v], new_goal, None)",
      "compute_reward(obs[\"achieved_goal\"][v], new_goal, None)", "tests/test_her.py"),
    M("her_ratio", "HER: relabel share 1 - 1/k instead of 1 - 1/(k+1)", HER,
      "return 1 - (1.0 / (n_sampled_goal + 1))", "return 1 - (1.0 / n_sampled_goal)", "tests/test_her.py"),
    # --- SAC / TD3 -------------------------------------------------------------------------------------------
    M("sac_target_entropy_sign", "SAC target: min Q + alpha log pi instead of - alpha log pi", SAC,
      "next_q = jnp.minimum(nq1, nq2) - ent_coef * next_log_prob",
      "next_q = jnp.minimum(nq1, nq2) + ent_coef * next_log_prob", "tests/test_sb3_sac_parity.py"),
    M("sac_target_max", "SAC target: max of the twin target critics", SAC,
      "next_q = jnp.minimum(nq1, nq2) - ent_coef * next_log_prob",
      "next_q = jnp.maximum(nq1, nq2) - ent_coef * next_log_prob", "tests/test_sb3_sac_parity.py"),
    M("sac_alpha_loss_sign", "SAC: alpha loss with log pi - target entropy", SAC,
      "jax.lax.stop_gradient(log_prob + target_entropy)", "jax.lax.stop_gradient(log_prob - target_entropy)",
      "tests/test_sac.py", "tests/test_sb3_sac_parity.py"),
    M("sac_polyak_stale_critic", "SAC: Polyak towards the critic from before its step", SAC,
      "polyak(ts.target_critic_params, critic_params, c.tau)",
      "polyak(ts.target_critic_params, ts.critic_params, c.tau)", "tests/test_sac.py"),
    M("sac_q_min_metric", "SAC diagnostics: q_min_mean reports Q1's mean", SAC,
      "q_min_mean=jnp.minimum(q1, q2).mean(),\n                log_prob_mean",
      "q_min_mean=q1.mean(),\n                log_prob_mean", "tests/test_sac.py"),
    M("offpolicy_learning_starts", "off-policy warm-up: random actions while num_timesteps <= learning_starts",
      OFFPOLICY,
      "warm = ts.num_timesteps < c.learning_starts", "warm = ts.num_timesteps <= c.learning_starts",
      "tests/test_offpolicy.py"),
    M("td3_no_policy_delay", "TD3: actor and targets updated every step (policy_delay ignored)", TD3,
      "delayed = n_updates % c.policy_delay == 0", "delayed = n_updates % 1 == 0",
      "tests/test_sb3_sac_parity.py", "tests/test_sac.py"),
    M("td3_noise_not_clipped", "TD3: target policy smoothing noise not clipped", TD3,
      "smoothing = jnp.clip(c.target_policy_noise * noise, -c.target_noise_clip, c.target_noise_clip)",
      "smoothing = c.target_policy_noise * noise", "tests/test_sb3_sac_parity.py"),
    # --- resume and interrupts -------------------------------------------------------------------------------
    M("resume_fresh_prng_key", "resume restores the run but re-derives the PRNG keys from the seeds", TRAIN,
      "    runner = restored[\"runner\"]\n",
      "    runner = restored[\"runner\"].replace(train_state=restored[\"runner\"].train_state.replace("
      "key=v_init(keys).train_state.key))\n",
      "tests/test_train_cli.py::test_resume_is_bitwise"),
    M("resume_update_count_not_saved", "PPO: the update counter is not advanced (resume restarts the schedule)",
      PPO, "return (ts.replace(step=ts.step + 1), env_state, ep_ret), metrics",
      "return (ts, env_state, ep_ret), metrics", "tests/test_train_cli.py::test_resume_is_bitwise"),
    M("sac_resume_buffer_not_restored", "SAC resume: the replay buffer restarts empty", TRAIN,
      "    runner = restored[\"runner\"]\n",
      "    runner = restored[\"runner\"]; runner = runner.replace(buffer=v_init(keys).buffer) "
      "if hasattr(runner, \"buffer\") else runner\n",
      "tests/test_train_cli.py::test_sac_her_run_and_exact_resume"),
    M("interrupt_no_checkpoint", "Ctrl-C: no checkpoint of the last finished chunk is saved", TRAIN,
      "    session.checkpoint()  # a no-op when this chunk was already checkpointed\n", "    pass\n",
      "tests/test_run_safety.py::test_second_ctrl_c_stops_at_once_and_keeps_the_last_finished_chunk"),
    M("interrupt_status_not_set", "Ctrl-C: meta.json keeps status 'running'", TRAIN,
      "  session.set_status(\"interrupted\")\n", "  pass\n",
      "tests/test_run_safety.py::test_ctrl_c_right_after_a_checkpointed_chunk"),
    M("interrupt_first_signal_ignored", "Ctrl-C: the stop request is never acted on", TRAIN,
      "    if stop.requested:\n      return \"interrupted\", time.time() - t0\n",
      "    if False:\n      return \"interrupted\", time.time() - t0\n",
      "tests/test_run_safety.py::test_ctrl_c_right_after_a_checkpointed_chunk"),
    # --- checkpoint integrity (issue 14) ------------------------------------------------------------------
    M("checksum_not_verified", "checkpoints load without checking their sha256", CKPT,
      "      if _sha256(f) != want[\"sha256\"]:", "      if False:",
      "tests/test_checkpoints.py"),
    M("prune_deletes_newest", "retention keeps the oldest checkpoints instead of the newest", CKPT,
      "    for s in older[:max(0, excess)]:", "    for s in older[-max(0, excess):] if excess > 0 else []:",
      "tests/test_checkpoints.py"),
    M("zero_size_leaves_dropped", "zero-size leaves are not rebuilt on restore (mjx.Data.act)", CKPT,
      "  out = [np.zeros(t.shape, t.dtype) if _is_empty(t) else next(filled) for t in leaves]",
      "  out = [next(filled, np.zeros(t.shape, t.dtype)) for t in leaves]", "tests/test_checkpoints.py"),
    M("resume_metrics_from_run_dir", "resume takes metrics.npz of the run directory, not the checkpoint's", TRAIN,
      "saved_metrics if saved_metrics is not None else rd.load_metrics()", "rd.load_metrics()",
      "tests/test_run_safety.py::test_resume_takes_the_metrics_history_from_the_checkpoint"),
    M("tensorboard_not_truncated", "a resumed run keeps the killed process's TensorBoard events", TRAIN,
      "    if resume_step is not None:\n      for s in seeds:", "    if False:\n      for s in seeds:",
      "tests/test_run_safety.py::test_kill_then_resume_keeps_tensorboard_and_metrics_consistent"),
    # --- issue 13: encoders, the observation pytree, the policy item -----------------------------------------
    M("critic_routing_actor_trains_encoder", "critic routing: the actor's features keep their gradient", NETS,
      "  return lambda critic_params, obs: jax.lax.stop_gradient(\n",
      "  return lambda critic_params, obs: (\n", "tests/test_nets.py"),
    M("her_obs_silent_cast", "HER buffer: observations of another dtype are cast silently", HER,
      "    if k not in GOAL_KEYS and v.dtype != want:", "    if False:", "tests/test_her.py"),
    M("policy_item_not_saved", "checkpoints lack the policy item (load_policy reads the whole state)", TRAIN,
      "                            policy=algo.policy_of(self.plan.config, p.runner))",
      "                            policy=None)",
      "tests/test_train_cli.py::test_load_policy_reads_only_the_policy_item"),
    # --- issue 15: frame stacks rebuilt from single frames, DrQ ------------------------------------------------
    M("her_stack_not_clipped", "frame stacks: times below 0 wrap to the episode's end instead of o_0", HER,
      "  idx = jnp.maximum(t[:, None] + jnp.arange(1 - k, 1), 0)", "  idx = t[:, None] + jnp.arange(1 - k, 1)",
      "tests/test_her.py::test_frame_stacks_are_rebuilt_from_single_frames"),
    M("drq_zero_padding", "DrQ pads with zeros instead of replicating the border", DRQ,
      'mode="edge")', 'mode="constant")',
      "tests/test_drq.py::test_each_sample_is_an_integer_translation_of_its_replicate_padded_input"),
    M("drq_same_shift_obs_next", "DrQ shifts obs and next_obs with the same key", DRQ,
      "random_shift(k_next, batch.next_obs[image_key], pad)", "random_shift(k_obs, batch.next_obs[image_key], pad)",
      "tests/test_drq.py::test_augment_shifts_obs_and_next_obs_independently_and_nothing_else"),
    M("drq_not_applied", "the loop ignores drq: samples are not augmented", OFFPOLICY,
      "        sample = drq.augment(sample, k_aug)", "        sample = sample",
      "tests/test_drq.py::test_a_sac_her_run_on_drq_augmented_frame_stacks"),
    # --- issue 15 (agent side): acting on frame stacks outside training, the ch9 diagnostics ---------------------
    M("eval_stack_newest_frame_only", "eval acts on copies of the newest frame, not the k-frame history", EVAL,
      "frames.push(stacked, nxt.obs, frame_stack, first=nxt.done > 0)", "frames.reset(nxt.obs, frame_stack)",
      "tests/test_pixel_acting.py::test_eval_acts_on_the_stacks_training_acted_on"),
    M("policy_stack_not_kept", "load_policy's Policy restarts its frame stack on every call", POLICY,
      "stacked = frames.reset(new, self.frame_stack) if self._stack is None else",
      "stacked = frames.reset(new, self.frame_stack) if True else",
      "tests/test_pixel_acting.py::test_policy_keeps_the_stack_or_takes_a_stacked_channel_first_observation"),
    M("pixel_runs_get_state_push_rule", "diagnostics: a pixel run's Phase-1 plateau is reported as H2", DIAG,
      'if "Push" not in c["env_id"] or c["pixels"]:', 'if "Push" not in c["env_id"]:',
      "tests/test_diagnostics_offpolicy.py::"
      "test_a_flat_pixel_run_warns_at_3m_and_at_its_end_not_with_the_state_push_rule"),
    # --- issue 15: pixel observations ------------------------------------------------------------------------
    M("pixels_stale_reset_frame", "cpu pixels: an env that resets keeps its last frame as the next episode's first",
      CPU, "            f_next[i] = self._renderer().frame(d.qpos, goal_next[i])", "            f_next[i] = f_last[i]",
      "tests/test_pixels.py::test_episode_end_frames"),
    M("pixels_goal_marker_fixed", "pixels: the goal marker is not moved to the goal", PIXELS,
      "    d.mocap_pos[self.goal_mocap] = goal", "    d.mocap_pos[self.goal_mocap] = 0.0 * goal",
      "tests/test_pixels.py::test_frames_follow_the_block_and_the_goal"),
    M("pixels_proprio_indices", "pixels: proprioception takes the object position instead of the finger state",
      PIXELS, "PUSH_PROPRIO = (0, 1, 2, 9, 10, 20, 21, 22, 23, 24)", "PUSH_PROPRIO = (0, 1, 2, 3, 4, 20, 21, 22, 23, 24)",
      "tests/test_pixels.py::test_cpu_pixel_observations"),
    M("strict_pixels_leak", "strict pixels: the pixel encoders read achieved_goal anyway", "fetchjax/encoders/cnn.py",
      "    keys = [k for k in obs if k != image_key and k not in hidden_keys]",
      "    keys = [k for k in obs if k != image_key]",
      "tests/test_pixels.py::test_strict_pixels_networks_never_read_achieved_goal"),
]


def tracked_files(root: Path) -> list[str]:
  out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=root, capture_output=True, text=True,
                       check=True).stdout.splitlines()
  return [f for f in out if (root / f).is_file()]


def copy_tree(root: Path, dst: Path) -> None:
  for f in tracked_files(root):
    (dst / f).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(root / f, dst / f)


class StaleList(Exception):
  pass


def mutated_source(root: Path, m: Mutation) -> str:
  """The mutated text of `m.file` under `root`; StaleList unless the snippet occurs exactly once and the result
  compiles."""
  text = (root / m.file).read_text()
  n = text.count(m.original)
  if n != 1:
    raise StaleList(f"{m.id}: the original snippet occurs {n} times in {m.file} (expected exactly once)\n"
                    f"  snippet: {m.original!r}")
  out = text.replace(m.original, m.mutated)
  try:
    compile(out, m.file, "exec")
  except SyntaxError as e:
    raise StaleList(f"{m.id}: the mutated {m.file} does not compile: {e}") from None
  return out


def check_list(root: Path, muts) -> list[str]:
  """Problems with the list against the tree at `root` (empty when every mutation applies)."""
  problems = [f"duplicate id {i}" for i in {m.id for m in muts} if sum(x.id == i for x in muts) > 1]
  for m in muts:
    try:
      mutated_source(root, m)
    except StaleList as e:
      problems.append(str(e))
    if not m.tests:
      problems.append(f"{m.id}: no tests named")
  return problems


def test_files(m: Mutation) -> list[Path]:
  return [Path(t.split("::")[0]) for t in m.tests if not t.startswith("-")]


def run_tests(tree: Path, tests: tuple[str, ...], timeout: float, cache: Path) -> tuple[str, int | None, float, str]:
  env = dict(os.environ, PYTHONPATH=str(tree), JAX_COMPILATION_CACHE_DIR=str(cache),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="2", PYTHONDONTWRITEBYTECODE="1")
  env.pop("FETCHJAX_PARITY_RECORDS", None)
  cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *tests]
  t0 = time.time()
  try:
    r = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
  except subprocess.TimeoutExpired:
    return "timeout", None, time.time() - t0, ""
  tail = "\n".join((r.stdout + r.stderr).strip().splitlines()[-3:])
  failed = [line for line in r.stdout.splitlines() if line.startswith(("FAILED", "ERROR"))]
  status = {0: "survived", 1: "killed", 2: "killed"}.get(r.returncode, f"pytest exit {r.returncode}")
  return status, r.returncode, time.time() - t0, "; ".join(failed[:2]) or tail


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="mutation_check", description=__doc__.split("\n\n")[0])
  p.add_argument("--only", help="comma-separated mutation ids")
  p.add_argument("--list", action="store_true", help="print the mutations and exit")
  p.add_argument("--check", action="store_true", help="only check that every mutation applies (fast)")
  p.add_argument("--timeout", type=float, default=900, help="seconds per pytest run (default 900)")
  p.add_argument("--json-out", type=Path)
  p.add_argument("--skip-baseline", action="store_true", help="do not run the named tests on the unmutated tree")
  a = p.parse_args(argv)
  muts = MUTATIONS
  if a.only:
    ids = a.only.split(",")
    unknown = sorted(set(ids) - {m.id for m in MUTATIONS})
    if unknown:
      p.error(f"unknown mutation id(s): {', '.join(unknown)}")
    muts = [m for m in MUTATIONS if m.id in ids]
  problems = check_list(ROOT, muts)
  if problems:
    print("mutation_check: error: the mutation list is stale:\n  " + "\n  ".join(problems), file=sys.stderr)
    return 2
  if a.check:
    print(f"mutation_check: all {len(muts)} mutations apply to this tree")
    return 0
  if a.list:
    for m in muts:
      print(f"{m.id:36s} {m.file:30s} {m.what}\n{'':36s} tests: {' '.join(m.tests)}"
            + (f"  (needs {m.needs})" if m.needs else ""))
    return 0

  results = []
  with tempfile.TemporaryDirectory(prefix="fetchjax_mut_") as tmp:
    tmp = Path(tmp)
    cache = tmp / "jax_cache"
    base = tmp / "base"
    copy_tree(ROOT, base)
    runnable = [m for m in muts if all((base / f).exists() for f in test_files(m))]
    if not a.skip_baseline:
      tests = sorted({t for m in runnable for t in m.tests})
      print(f"baseline: {len(tests)} test selections on the unmutated tree ...", flush=True)
      status, rc, secs, info = run_tests(base, tuple(tests), 4 * a.timeout, cache)
      print(f"baseline: {'passed' if rc == 0 else status} in {secs:.0f} s {info if rc else ''}", flush=True)
      if rc != 0:
        print("mutation_check: error: the named tests fail without any mutation", file=sys.stderr)
        return 1
    for m in muts:
      if m not in runnable:
        results.append(dict(id=m.id, what=m.what, file=m.file, tests=list(m.tests), status="no tests here",
                            needs=m.needs, seconds=0.0, detail=""))
        print(f"{m.id:36s} no tests here (needs {m.needs or 'missing test files'})", flush=True)
        continue
      tree = tmp / m.id
      shutil.copytree(base, tree)
      (tree / m.file).write_text(mutated_source(base, m))
      status, rc, secs, info = run_tests(tree, m.tests, a.timeout, cache)
      shutil.rmtree(tree)
      results.append(dict(id=m.id, what=m.what, file=m.file, tests=list(m.tests), status=status, needs=m.needs,
                          seconds=round(secs, 1), detail=info))
      print(f"{m.id:36s} {status.upper():9s} {secs:6.0f} s  {info[:150]}", flush=True)

  counted = [r for r in results if r["status"] != "no tests here"]
  killed = sum(r["status"] == "killed" for r in counted)
  print(f"\n| mutation | behaviour | tests | result |\n|---|---|---|---|")
  for r in results:
    print(f"| {r['id']} | {r['what']} | {' '.join(r['tests'])} | {r['status']}"
          + (f" (needs {r['needs']})" if r["needs"] and r["status"] == "no tests here" else "") + " |")
  print(f"\nscore: {killed}/{len(counted)} killed" + (f" ({len(results) - len(counted)} without tests here)"
                                                    if len(counted) < len(results) else ""))
  if a.json_out:
    a.json_out.write_text(json.dumps(dict(killed=killed, counted=len(counted), results=results), indent=1) + "\n")
  return 0 if killed == len(counted) else 1


if __name__ == "__main__":
  sys.exit(main())
