"""The fast CPU path: on by default when XLA accepts it, off when the user says so."""

import os

from bt_jax import devices


def test_fast_cpu_flag_is_probed_and_respects_the_user():
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=2"
    flags, message = devices.choose_cpu_flags(env, [])
    assert flags.endswith(devices.FAST_CPU_FLAG) and "--nofast_cpu" in message
    assert devices.choose_cpu_flags(env, ["--nofast_cpu"]) == (env["XLA_FLAGS"], None)
    assert devices.choose_cpu_flags({**env, "BT_JAX_FAST_CPU": "0"}, []) == (
        env["XLA_FLAGS"], None)
    mine = {**env, "XLA_FLAGS": "--xla_cpu_experimental_ynn_fusion_type=default"}
    assert devices.choose_cpu_flags(mine, []) == (mine["XLA_FLAGS"], None)


def test_a_flag_xla_rejects_is_left_off(monkeypatch):
    monkeypatch.setattr(devices, "FAST_CPU_FLAG", "--xla_bt_jax_no_such_flag=1")
    env = {**os.environ, "XLA_FLAGS": ""}
    flags, message = devices.choose_cpu_flags(env, [])
    assert flags == "" and "rejected" in message
