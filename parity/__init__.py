"""The parity suite against CPU gymnasium-robotics and Stable-Baselines3 (`python -m parity`, issue 5).

Until it lands, the parity checks live in tests/: test_goal.py (rewards, success, mat2euler),
test_parity_cpu.py (C backend, bit-exact trajectories), test_mjx_parity.py (MJX trajectories),
test_samplers.py (goal/object samplers).
"""
