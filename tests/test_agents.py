"""fetchjax.agents: the algorithm registry (what the CLIs use) and the module structure (no algorithm imports
another; shared pieces live in nets / offpolicy / her / configs, encoders in fetchjax.encoders)."""
from __future__ import annotations

import ast
import dataclasses
import json
from pathlib import Path

import pytest

from fetchjax import agents, diagnostics
from fetchjax.agents import offpolicy, ppo, sac, td3

AGENTS_DIR = Path(agents.__file__).parent
ALGORITHM_MODULES = ("ppo", "sac", "td3")


def _imported_agent_modules(name: str) -> set[str]:
  """The fetchjax.agents submodules `fetchjax/agents/<name>.py` imports (at any depth of the file)."""
  tree = ast.parse((AGENTS_DIR / f"{name}.py").read_text())
  out = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.ImportFrom) and node.module:
      if node.module == "fetchjax.agents":
        out |= {a.name for a in node.names}
      elif node.module.startswith("fetchjax.agents."):
        out.add(node.module.split(".")[2])
    elif isinstance(node, ast.Import):
      out |= {a.name.split(".")[2] for a in node.names if a.name.startswith("fetchjax.agents.")}
  return out


@pytest.mark.parametrize("name", ALGORITHM_MODULES + ("offpolicy", "nets", "configs", "her", "drq", "frames"))
def test_no_algorithm_imports_another(name):
  siblings = _imported_agent_modules(name) & set(ALGORITHM_MODULES)
  assert not siblings - {name}, f"fetchjax/agents/{name}.py imports the algorithm(s) {sorted(siblings)}"


def test_the_modules_the_layout_names_are_all_there():
  """The parametrisation above covers every module of fetchjax/agents (a new one must be added there)."""
  names = {p.stem for p in AGENTS_DIR.glob("*.py")} - {"__init__"}
  assert names == set(ALGORITHM_MODULES) | {"offpolicy", "nets", "configs", "her", "drq", "frames"}


def test_registry_entries():
  assert list(agents.ALGORITHMS) == ["ppo", "sac", "td3"]
  for name, algo in agents.ALGORITHMS.items():
    assert algo.name == name and agents.get(name) is algo
    assert dataclasses.is_dataclass(algo) and algo.__dataclass_params__.frozen
    assert set(algo.presets) >= {"book", "gpu"}
    for preset, cfg in algo.presets.items():
      assert isinstance(cfg, algo.config_cls)
      # meta.json round trip, as the CLI stores and reloads configs
      assert algo.config_from_dict(json.loads(json.dumps(dataclasses.asdict(cfg)))) == cfg, preset
    assert set(algo.rule_ids) <= set(diagnostics.RULES)
    assert algo.check({}, [], algo.presets["book"]) == []  # an empty history: nothing to find yet
  assert agents.get("sac").make_runner is sac.make_runner and agents.get("td3").policy_of is offpolicy.policy_of
  assert agents.get("ppo").tb_names is ppo.TB_NAMES and agents.get("td3").tb_names is td3.TB_NAMES
  with pytest.raises(ValueError, match="unknown algorithm 'dqn'; available: ppo, sac, td3"):
    agents.get("dqn")


def test_preset_overrides_are_checked_and_typed():
  algo = agents.get("td3")
  cfg = algo.preset("book", learning_rate="1e-4", her="true", hidden_sizes=[64, 64])
  assert (cfg.learning_rate, cfg.her, cfg.hidden_sizes) == (1e-4, True, (64, 64))
  with pytest.raises(ValueError, match="unknown TD3 preset 'nope'; available: book, book_her, gpu, her"):
    algo.preset("nope")
  with pytest.raises(ValueError, match="unknown TD3Config field"):
    algo.preset("book", ent_coef=0.1)


def test_offpolicy_tb_names_are_shared():
  """TD3 logs what every off-policy learner reports; SAC adds its entropy terms."""
  assert td3.TB_NAMES == offpolicy.TB_NAMES
  assert set(sac.TB_NAMES) - set(offpolicy.TB_NAMES) == {"ent_coef", "ent_coef_loss", "log_prob_mean"}
  assert all(sac.TB_NAMES[k] == v for k, v in offpolicy.TB_NAMES.items())
