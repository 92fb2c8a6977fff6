"""The deploy files keep the README's security promises (they are configuration, so check their text)."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def _commands(doc: dict) -> list[str]:
    keys = ("initialization_commands", "setup_commands", "head_start_ray_commands",
            "worker_start_ray_commands")
    return [c for k in keys for c in doc.get(k) or []]


def test_cluster_launcher_share_is_not_world_writable_and_kernels_stay_local() -> None:
    doc = yaml.safe_load((DEPLOY / "cluster.yaml").read_text())
    cmds = _commands(doc)
    text = "\n".join(cmds)
    assert not re.search(r"chmod\s+(-R\s+)?[0-7]?[0-7][0-7][2367]\b", text), "a world-writable mode"
    assert "777" not in text and "a+w" not in text and "o+w" not in text
    share = [c for c in cmds if "install -d" in c and "/mnt/efs" in c]
    assert share and all(re.search(r"-m 0?7[0-5][0-5]\b", c) for c in share)
    native = re.findall(r"FUNAD_NATIVE_DIR=(\S+)", text)
    assert native and not any(p.startswith("/mnt/") for p in native), native
    # every `ray start` runs with the token settings written to ~/.bashrc by setup_commands
    starts = [c for c in cmds if "ray start" in c]
    assert starts and all("source ~/.bashrc" in c for c in starts)
    assert "RAY_AUTH_MODE=token" in text


def test_no_deploy_file_puts_the_dashboard_on_all_interfaces() -> None:
    for name in ("cluster.yaml", "rayjob.yaml"):
        for doc in yaml.safe_load_all((DEPLOY / name).read_text()):
            assert "0.0.0.0" not in yaml.safe_dump(doc), name


def test_rayjob_turns_on_token_auth_and_guards_the_head_pod() -> None:
    docs = list(yaml.safe_load_all((DEPLOY / "rayjob.yaml").read_text()))
    job = next(d for d in docs if d["kind"] == "RayJob")
    cluster = job["spec"]["rayClusterSpec"]
    assert cluster["authOptions"] == {"mode": "token"}
    assert cluster["headGroupSpec"]["serviceType"] == "ClusterIP"
    env = yaml.safe_load(job["spec"]["runtimeEnvYAML"])["env_vars"]
    assert not env["FUNAD_NATIVE_DIR"].startswith("/mnt/shared")
    policy = next(d for d in docs if d["kind"] == "NetworkPolicy")
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}
    assert "Ingress" in policy["spec"]["policyTypes"]
