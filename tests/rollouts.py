"""Whole multi-episode rollouts of a batched fetchjax env beside CPU gymnasium-robotics, env by env.

`run(env, actions, first_tasks)` steps a fetchjax env (any backend) through T steps with the given actions, so
that every env truncates and auto-resets at steps 50, 100, ...; beside it, one TimeLimit-wrapped gymnasium-robotics
env per fetchjax env takes the same actions. Every gymnasium episode starts from the task its fetchjax env is in:
  - the first episode: tasks sampled by gymnasium-robotics itself (`reset(seed=...)`), injected into fetchjax
    with `env.reset_to` (as the book's evaluation does);
  - after each auto-reset: the task fetchjax drew for that env, injected into gymnasium (object xy and goal, then
    `mj_forward`, which is exactly what gymnasium's own `_reset_sim` does with its sampled xy).
The task fetchjax drew is computed independently of what its reset observation shows (`drawn_tasks`: the env's
per-env key split as `FetchEnv.step` splits it, then the public `env.sample_task`), so a reset that puts another
env's (or no) block position into an env is a mismatch here, not a consistent copy.

Everything is returned as float64 numpy arrays, time-major [T, n, ...]: the transition's last observation
(`info["final_obs"]` vs gymnasium's step obs), the observation returned by the step (vs gymnasium's post-reset
observation at truncation), rewards, success, truncation flags, and the physics states at the end.
"""
from __future__ import annotations

import dataclasses

import jax
import mujoco
import numpy as np

KEYS = ("observation", "achieved_goal", "desired_goal")

# Observation components (gymnasium-robotics `_get_obs`), by observation size.
PARTS = {
    10: {"grip_pos": slice(0, 3), "gripper_state": slice(3, 5), "grip_velp": slice(5, 8),
         "gripper_vel": slice(8, 10)},
    25: {"grip_pos": slice(0, 3), "object_pos": slice(3, 6), "object_rel_pos": slice(6, 9),
         "gripper_state": slice(9, 11), "object_rot": slice(11, 14), "object_velp": slice(14, 17),
         "object_velr": slice(17, 20), "grip_velp": slice(20, 23), "gripper_vel": slice(23, 25)},
}
VELOCITY_PARTS = ("grip_velp", "gripper_vel", "object_velp", "object_velr")


def drawn_tasks(env, state):
  """(object_xy [n, 2], goal [n, 3]) that `env.step(state, .)` gives the envs it auto-resets: FetchEnv.step splits
  each env's key `state.info["rng"]` into (next key, task key) and samples the task with `env.sample_task`."""
  split = jax.vmap(lambda k: jax.random.split(k, 2))(state.info["rng"])
  return jax.vmap(env.sample_task)(split[:, 1])


def robot_contact(ref) -> bool:
  """Whether a robot geom other than the base (which always rests on the floor) touches something: fingers on
  the table, the gripper on the block."""
  m, d = ref.model, ref.data
  for c in d.contact[:d.ncon]:
    for g in (c.geom1, c.geom2):
      name = mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, m.geom_bodyid[g]) or ""
      if name.startswith("robot0:") and name != "robot0:base_link":
        return True
  return False


def inject(ref, xy, goal) -> dict:
  """Puts a reset gymnasium-robotics env (unwrapped) into the task (object xy, goal): `_reset_sim` with this
  xy instead of its sampled one, then `_sample_goal`'s result replaced. Returns the reset observation."""
  if ref.has_object:
    adr = ref.model.jnt_qposadr[ref._model_names.joint_name2id["object0:joint"]]
    ref.data.qpos[adr:adr + 2] = np.asarray(xy, np.float64)
  ref.goal = np.asarray(goal, np.float64).copy()
  mujoco.mj_forward(ref.model, ref.data)
  return ref._get_obs()


@dataclasses.dataclass
class Rollout:
  """[T, n, ...] float64 arrays (T steps of n envs), and the reset observations at t = -1 (`reset0`)."""
  ours_final: dict      # info["final_obs"]: the transition's last observation
  theirs_final: dict    # gymnasium's step observation
  ours_next: dict       # the observation the step returned (the next episode's first one at truncation)
  theirs_next: dict     # gymnasium's observation to act on next (its injected reset observation at truncation)
  ours_reset0: dict
  theirs_reset0: dict
  reward: np.ndarray
  ref_reward: np.ndarray
  success: np.ndarray
  ref_success: np.ndarray
  done: np.ndarray
  ref_truncated: np.ndarray
  ref_terminated: np.ndarray
  drawn_xy: np.ndarray     # [T, n, 2]: the task fetchjax drew at each step (used where done)
  drawn_goal: np.ndarray   # [T, n, 3]
  block_moved: np.ndarray  # [T, n]: gymnasium's block displacement from its episode start (0 without object)
  ref_contact: np.ndarray  # [T, n]: the reference had a robot contact other than the base's (`robot_contact`)
  ours_physics: np.ndarray | None   # [n, nq + nv] qpos, qvel at the end (cpu backend: float64 C MuJoCo state)
  theirs_physics: np.ndarray        # [n, nq + nv]

  @property
  def resets(self) -> list[tuple[int, int]]:
    return [(int(t), int(i)) for t, i in zip(*np.nonzero(self.done))]


def first_tasks(env_id: str, n: int, seed_base: int):
  """(xy [n, 2], goal [n, 3]) float64 that gymnasium-robotics samples on reset(seed=seed_base + i)."""
  from fetchjax.gymnasium_reference import book_tasks

  return book_tasks(env_id, n, seed_base)


def run(env, actions: np.ndarray, tasks, seed_base: int = 0) -> Rollout:
  """Steps `env` (n = env.num_envs) and n gymnasium-robotics envs with `actions` [T, n, 4] float32 from the
  first tasks `tasks` = (xy [n, 2], goal [n, 3]) float64 (gymnasium-sampled, see `first_tasks`)."""
  from fetchjax.gymnasium_reference import gymnasium_make

  n, T = env.num_envs, actions.shape[0]
  assert actions.shape == (T, n, 4) and actions.dtype == np.float32
  xy0, g0 = (np.asarray(x, np.float64) for x in tasks)
  refs = [gymnasium_make(env.env_id) for _ in range(n)]
  theirs_reset0 = []
  for i, r in enumerate(refs):
    r.reset(seed=seed_base + i)  # starts the TimeLimit count; the task is then set explicitly
    theirs_reset0.append(inject(r.unwrapped, xy0[i], g0[i]))
  s = env.reset_to(xy0, g0)  # numpy float64: the cpu backend keeps the exact object positions
  # reset_to builds some leaves eagerly (uncommitted arrays): one pass through jit makes the state look like
  # step's output, else the (MJX: ~45 s) step program is compiled twice, for the first and the second call.
  s = jax.jit(lambda x: x)(s)
  step = jax.jit(env.step)
  draw = jax.jit(lambda s: drawn_tasks(env, s))
  stack = lambda obs: {k: np.asarray(obs[k], np.float64) for k in KEYS}  # noqa: E731
  ours_reset0 = stack(s.obs)

  rows = {k: [] for k in ("ours_final", "ours_next", "theirs_final", "theirs_next", "reward", "ref_reward",
                          "success", "ref_success", "done", "ref_truncated", "ref_terminated", "drawn_xy",
                          "drawn_goal", "block_moved", "ref_contact")}
  start_xy = xy0.copy()
  for t in range(T):
    dxy, dg = (np.asarray(x, np.float64) for x in draw(s))
    s = step(s, actions[t])
    rows["ours_final"].append(stack(s.info["final_obs"]))
    rows["ours_next"].append(stack(s.obs))
    for k, v in (("reward", s.reward), ("success", s.info["is_success"]), ("done", s.done)):
      rows[k].append(np.asarray(v, np.float64))
    rows["drawn_xy"].append(dxy)
    rows["drawn_goal"].append(dg)
    fin, nxt, rr, rs, rtr, rte, moved, touch = {k: [] for k in KEYS}, {k: [] for k in KEYS}, [], [], [], [], [], []
    for i, r in enumerate(refs):
      o, rew, term, trunc, info = r.step(actions[t, i])
      u = r.unwrapped
      moved.append(float(np.linalg.norm(o["achieved_goal"][:2] - start_xy[i])) if u.has_object else 0.0)
      touch.append(robot_contact(u))
      for k in KEYS:
        fin[k].append(o[k])
      rr.append(rew)
      rs.append(info["is_success"])
      rtr.append(trunc)
      rte.append(term)
      if trunc:  # the next gymnasium episode starts from the task fetchjax drew for this env
        r.reset(seed=seed_base + i)
        o = inject(u, dxy[i], dg[i])
        start_xy[i] = dxy[i]
      for k in KEYS:
        nxt[k].append(o[k])
    rows["theirs_final"].append({k: np.array(v, np.float64) for k, v in fin.items()})
    rows["theirs_next"].append({k: np.array(v, np.float64) for k, v in nxt.items()})
    rows["ref_reward"].append(np.array(rr, np.float64))
    rows["ref_success"].append(np.array(rs, np.float64))
    rows["ref_truncated"].append(np.array(rtr, np.float64))
    rows["ref_terminated"].append(np.array(rte, np.float64))
    rows["block_moved"].append(np.array(moved))
    rows["ref_contact"].append(np.array(touch))

  def time_major(lst):
    if isinstance(lst[0], dict):
      return {k: np.stack([x[k] for x in lst]) for k in KEYS}
    return np.stack(lst)

  out = {k: time_major(v) for k, v in rows.items()}
  theirs_physics = np.stack([np.concatenate([r.unwrapped.data.qpos, r.unwrapped.data.qvel]) for r in refs])
  ours_physics = None
  if env.backend_name == "cpu":
    m = refs[0].unwrapped.model
    phys = env.backend.physics_state(s.pipeline_state)  # mjSTATE_INTEGRATION: time, qpos, qvel, ...
    ours_physics = phys[:, 1:1 + m.nq + m.nv]
  for r in refs:
    r.close()
  return Rollout(ours_reset0=ours_reset0,
                 theirs_reset0={k: np.stack([o[k] for o in theirs_reset0]).astype(np.float64) for k in KEYS},
                 ours_physics=ours_physics, theirs_physics=theirs_physics, **out)


def angle_diff(a, b):
  """a - b wrapped to [-pi, pi) (Euler angles wrap at +-pi)."""
  return (np.asarray(a) - np.asarray(b) + np.pi) % (2 * np.pi) - np.pi


def component_errors(ours: np.ndarray, theirs: np.ndarray, mask=None) -> dict[str, float]:
  """Max abs error of each observation component over [..., obs_size] arrays (where `mask` [...] is True)."""
  parts = PARTS[ours.shape[-1]]
  if mask is not None:
    ours, theirs = ours[mask], theirs[mask]
  out = {}
  for name, sl in parts.items():
    d = angle_diff(ours[..., sl], theirs[..., sl]) if name == "object_rot" else ours[..., sl] - theirs[..., sl]
    out[name] = float(np.abs(d).max()) if d.size else 0.0
  return out


def component_scale(theirs: np.ndarray, mask=None) -> dict[str, float]:
  """Max abs value of each observation component in the reference (how large what is compared is)."""
  parts = PARTS[theirs.shape[-1]]
  if mask is not None:
    theirs = theirs[mask]
  return {name: float(np.abs(theirs[..., sl]).max()) for name, sl in parts.items()}


def random_actions(T: int, n: int, seed: int) -> np.ndarray:
  """Uniform actions in [-1, 1]^4, [T, n, 4] float32 (contact allowed: for the exact C MuJoCo backend)."""
  return np.random.default_rng(seed).uniform(-1, 1, (T, n, 4)).astype(np.float32)


def excursions(T: int, n: int, seed: int, lift: int = 0, drift: int = 4) -> np.ndarray:
  """Per 50-step episode: `lift` steps straight up (Push: the fingers start 3 mm inside the table), k fast random
  steps (|a| up to 1, drifting upwards: z in [-0.5, 1]), the same k steps negated in reverse order, then `drift`
  steps of (+-0.5, +-0.5, 0.5). The gripper goes out ~10 cm and comes back without touching the table or reaching
  its joint limits (float32 MJX follows C MuJoCo to ~1e-5 m on fast free motion, docs/PARITY.md), and ends each
  episode moving, a few cm from where it started, so a reset that leaves the arm where it was shows.
  [T, n, 4] float32."""
  rng = np.random.default_rng(seed)
  a = np.zeros((T, n, 4), np.float32)
  k = (50 - lift - drift) // 2
  for start in range(0, T, 50):
    ep = np.zeros((50, n, 4), np.float32)
    ep[:lift, :, :2] = rng.uniform(-0.3, 0.3, (lift, n, 2))
    ep[:lift, :, 2] = 1.0
    u = rng.uniform(-1, 1, (k, n, 4)).astype(np.float32)
    u[..., 2] = rng.uniform(-0.5, 1.0, (k, n))
    ep[lift:lift + k] = u
    ep[lift + k:lift + 2 * k] = -u[::-1]
    ep[lift + 2 * k:, :, :2] = 0.5 * rng.choice([-1.0, 1.0], (n, 2))
    ep[lift + 2 * k:, :, 2] = 0.5
    a[start:start + 50] = ep[:min(50, T - start)]
  return a


def check(ro: Rollout, record, tol: dict[str, float], reset_tol: float, goal_tol: float, sparse: bool,
          label: str = "") -> None:
  """Every comparison of a rollout with the reference, each recorded (printed with `pytest -s`) and asserted.

  tol: per observation component, the max abs error allowed in the transitions' observations (`final_obs`);
  reset_tol: for every component of the reset observations (first and auto-reset ones);
  goal_tol: for achieved / desired goals (the same positions as in the observation, float32 goals).
  Rewards and success must agree exactly except where the reference distance lies within the achieved-goal
  error of the 5 cm threshold (and dense rewards within that error)."""
  T, n = ro.done.shape
  p = f"{label}: " if label else ""
  # -- episode ends: truncation at steps 50, 100, ... only, in both
  assert not ro.ref_terminated.any()
  np.testing.assert_array_equal(ro.done, ro.ref_truncated, err_msg="done flags differ from gymnasium's truncation")
  ends = np.nonzero(ro.done[:, 0])[0]
  np.testing.assert_array_equal(ends, np.arange(49, T, 50))
  assert ro.done[ends].all() and len(ends) >= 2, "at least two auto-resets of every env"
  done = ro.done.astype(bool)

  # -- the tasks: each auto-reset shows the task drawn from that env's key, fresh, different in every env
  np.testing.assert_array_equal(ro.ours_next["desired_goal"][done], ro.drawn_goal[done].astype(np.float32),
                                err_msg="the reset observation's goal is not the one drawn for that env")
  obs_size = ro.ours_final["observation"].shape[-1]
  if obs_size == 25:  # the block sits where the env drew it (xy), not where another env's draw put it
    record(f"{p}reset block xy vs drawn xy, max abs", float(np.abs(
        ro.ours_next["achieved_goal"][done][:, :2] - ro.drawn_xy[done]).max()), reset_tol)
  for t in ends:
    assert len({tuple(g) for g in ro.drawn_goal[t]}) == n, "every env draws its own goal"
    prev = ro.ours_final["desired_goal"][t]
    assert np.all(np.abs(ro.ours_next["desired_goal"][t] - prev).max(-1) > 1e-4), "a fresh goal after each reset"

  # -- observations of every transition, component by component (incl. the truncating one: final_obs)
  scale = component_scale(ro.theirs_final["observation"])
  errs = component_errors(ro.ours_final["observation"], ro.theirs_final["observation"])
  for c, e in errs.items():
    record(f"{p}transition obs {c} max abs (reference max |x| {scale[c]:.2g})", e, tol[c])
  for k in ("achieved_goal", "desired_goal"):
    record(f"{p}transition {k} max abs", float(np.abs(ro.ours_final[k] - ro.theirs_final[k]).max()), goal_tol)
  # -- the observation each step returns: the transition's own obs, or the next episode's first one
  for k in KEYS:
    np.testing.assert_array_equal(ro.ours_next[k][~done], ro.ours_final[k][~done],
                                  err_msg=f"{k}: a step that did not truncate returned another obs than final_obs")
  for k in KEYS:
    assert np.abs(ro.ours_next[k][done] - ro.ours_final[k][done]).max() > 1e-3, f"{k}: no reset at truncation"
  reset_errs = component_errors(ro.ours_next["observation"], ro.theirs_next["observation"], done)
  first_errs = component_errors(ro.ours_reset0["observation"], ro.theirs_reset0["observation"])
  for c in reset_errs:
    record(f"{p}reset obs {c} max abs (auto-resets / first reset)", max(reset_errs[c], first_errs[c]), reset_tol)
  for k in ("achieved_goal", "desired_goal"):
    record(f"{p}reset {k} max abs", max(float(np.abs(ro.ours_next[k][done] - ro.theirs_next[k][done]).max()),
                                      float(np.abs(ro.ours_reset0[k] - ro.theirs_reset0[k]).max())), goal_tol)

  # -- rewards and success: exact, except within the achieved-goal error of the threshold
  d_ref = np.linalg.norm(ro.theirs_final["achieved_goal"] - ro.theirs_final["desired_goal"], axis=-1)
  ag_err = float(np.abs(ro.ours_final["achieved_goal"] - ro.theirs_final["achieved_goal"]).max())
  margin = 2 * np.sqrt(3) * max(ag_err, goal_tol)
  near = np.abs(d_ref - 0.05) <= margin
  if sparse:
    mismatches = float(np.sum((ro.reward != ro.ref_reward) & ~near))
    record(f"{p}sparse reward mismatches (away from the threshold)", mismatches, 0)
  else:
    record(f"{p}dense reward max abs", float(np.abs(ro.reward - ro.ref_reward).max()), margin + 1e-6)
  record(f"{p}success mismatches (away from the threshold)", float(np.sum((ro.success != ro.ref_success) & ~near)), 0)
