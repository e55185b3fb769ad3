"""The `vlac` command. Each subcommand parses flags into its process's config dataclass and
calls that process's ``main(cfg)``; nothing else happens here. Imports are lazy per
subcommand, so an edge-only install (no torch, no cloud extras) still runs `vlac edge ...`.

Every config field is a flag (``--field-name``; nested configs as ``--sender.robot-id``);
``--config FILE.yaml`` loads a file first and flags override it. A section whose fields
depend on a type (``robot``, ``algorithm``: annotated with a class that has
``config_for(name)``) gets a selector flag (``--robot.type NAME``, ``--algorithm.name NAME``:
the class's ``selector``, ``type`` unless it says otherwise); the type named on the command
line (or as ``robot: {type: NAME}`` in the file) is resolved before parsing, and its config
class's fields become the other ``--robot.*`` flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import logging
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal

from vlac.shared.config import ConfigError, from_dict, load_yaml_dict

# subcommand path -> (module, config class, main function, one-line help)
COMMANDS: dict[tuple[str, ...], tuple[str, str, str, str]] = {
    ("keys", "generate"): ("vlac.shared.keys", "KeysConfig", "main",
                           "Create CURVE key pairs for ingest and robots."),
    ("ingest", "serve"): ("vlac.cloud.ingest.service", "IngestConfig", "main",
                          "Run the ingest service (ROUTER + CURVE) into the episode store."),
    ("store", "ls"): ("vlac.cloud.store.cli", "StoreLsConfig", "ls_main",
                      "List the episodes in the store."),
    ("store", "gc"): ("vlac.cloud.store.cli", "StoreGcConfig", "gc_main",
                      "Drop episodes that stayed incomplete in staging (never complete ones)."),
    ("store", "show"): ("vlac.cloud.store.cli", "StoreShowConfig", "show_main",
                        "Show one episode, step by step."),
    ("edge", "synthetic"): ("vlac.edge.transport.stream", "SyntheticStreamConfig", "main",
                            "Stream synthetic episodes through the spool and sender."),
    ("demos", "collect"): ("vlac.infra.demos", "DemosCollectConfig", "main",
                          "Record scripted-expert Meta-World demonstrations into the store."),
    ("demos", "export"): ("vlac.cloud.store.lerobot", "LeRobotExportConfig", "export_main",
                         "Export store episodes as a LeRobotDataset v3.0 folder."),
    ("demos", "import"): ("vlac.cloud.store.lerobot", "LeRobotImportConfig", "import_main",
                         "Import a LeRobotDataset v3.0 folder into the store."),
    ("edge", "run"): ("vlac.edge.process", "EdgeAgentConfig", "main",
                      "Run the edge agent: a robot (--robot.type), a policy, streaming to "
                      "ingest."),
    ("edge", "spec"): ("vlac.edge.process", "EdgeSpecConfig", "spec_main",
                       "Print a robot type's spec (for ingest's --spec-file)."),
    ("actor", "export"): ("vlac.cloud.actor.export", "ActorExportConfig", "main",
                          "Export the actor to ONNX (fp32 and static INT8 QDQ)."),
    ("critic", "train"): ("vlac.cloud.critic.train", "CriticTrainConfig", "main",
                          "Train the small VLAC critic on stored demonstrations."),
    ("critic", "eval"): ("vlac.cloud.critic.evaluate", "CriticEvalConfig", "main",
                         "VOC, negatives and done precision/recall on held-out episodes."),
    ("critic", "serve"): ("vlac.cloud.critic.service", "RewardServiceConfig", "main",
                          "Serve episode rewards over ZeroMQ for the learner."),
    ("actor", "pretrain"): ("vlac.infra.actor_cli", "ActorPretrainConfig", "pretrain_main",
                            "Imitation pretraining of the actor on demonstrations."),
    ("learner", "run"): ("vlac.cloud.learner.process", "LearnerConfig", "main",
                         "PPO on the fleet's episodes as they arrive in the store."),
    ("publisher", "serve"): ("vlac.cloud.fleet.publisher", "PublisherConfig", "serve_main",
                             "Announce signed weight assignments to the fleet (XPUB)."),
    ("publisher", "publish"): ("vlac.cloud.fleet.publisher", "PublisherConfig", "publish_main",
                               "Upload an exported INT8 actor as a new signed version."),
    ("fleet", "status"): ("vlac.infra.fleet_cli", "FleetConfig", "status_main",
                          "Robots, running and target versions, last seen, success, errors."),
    ("fleet", "versions"): ("vlac.infra.fleet_cli", "FleetConfig", "versions_main",
                            "Published versions and which is production / canary."),
    ("fleet", "promote"): ("vlac.infra.fleet_cli", "FleetConfig", "promote_main",
                           "Make --version production for every robot not pinned."),
    ("fleet", "rollback"): ("vlac.infra.fleet_cli", "FleetConfig", "rollback_main",
                            "Production back to the previous version (or --to)."),
    ("fleet", "canary"): ("vlac.infra.fleet_cli", "FleetConfig", "canary_main",
                          "Run --version on a --group or --fraction first (--end stops it)."),
    ("fleet", "pin"): ("vlac.infra.fleet_cli", "FleetConfig", "pin_main",
                       "Pin a --robot or --group to --version (--unpin removes it)."),
    ("fleet", "group"): ("vlac.infra.fleet_cli", "FleetConfig", "group_main",
                         "Put --robots into the group --name."),
    ("train",): ("vlac.infra.train", "TrainConfig", "main",
                 "The main job: the whole RL loop locally (demos, critic, actor, fleet, PPO)."),
    ("stack",): ("vlac.infra.stack", "StackConfig", "main",
                 "The main job: ingest + a fleet of robot processes on loopback."),
}


LOG_FORMAT = "%(asctime)s %(name)s %(levelname)s %(message)s"
VERBOSE_HELP = ("Debug logging, third-party log records included (`vlac train`: also its "
                "warnings and its processes' output, otherwise in WORKDIR/logs/).")


class LevelsByLogger(logging.Filter):
    """Passes a record at or above the level of the longest logger-name prefix in ``levels``
    that names its logger (``{"vlac": INFO}``: vlac's own loggers at INFO), any other at or
    above ``others``."""

    def __init__(self, levels: dict[str, int], others: int = logging.WARNING) -> None:
        super().__init__()
        self.levels = sorted(levels.items(), key=lambda kv: -len(kv[0]))
        self.others = others

    def filter(self, record: logging.LogRecord) -> bool:
        for prefix, level in self.levels:
            if record.name == prefix or record.name.startswith(prefix + "."):
                return record.levelno >= level
        return record.levelno >= self.others


def setup_logging(verbose: bool) -> None:
    """Log records on stderr: with ``-v`` everything at DEBUG; otherwise vlac's own at INFO
    and third-party ones (onnx_ir, the ONNX Runtime quantizer, ...) only from WARNING up.
    Jobs with a log file of their own (``vlac train``) put the rest there."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter(LOG_FORMAT, "%H:%M:%S"))
    if not verbose:
        handler.addFilter(LevelsByLogger({"vlac": logging.INFO}))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def _base_type(tp: Any) -> tuple[Any, bool]:
    """Strip Optional; returns (type, optional)."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _add_fields(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                chosen: dict[str, str] | None = None, skip: str = "") -> None:
    """``chosen``: section -> type name, for sections whose fields depend on a type;
    ``skip``: a field that already has its flag (the section's selector)."""
    chosen = chosen or {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name == skip:
            continue
        tp, optional = _base_type(hints[f.name])
        name = prefix + f.name
        helptext = f.metadata.get("help", "").replace("%", "%%")  # argparse %-formats help
        if dataclasses.is_dataclass(tp):
            _add_fields(parser, tp, name + ".", chosen)
            continue
        if hasattr(tp, "config_for"):  # e.g. robot: --robot.type NAME, then NAME's fields
            sel = getattr(tp, "selector", "type")
            parser.add_argument("--" + name.replace("_", "-") + "." + sel,
                                dest=name + "." + sel, default=argparse.SUPPRESS,
                                metavar="NAME", help=tp.type_help().replace("%", "%%"))
            _add_fields(parser, tp.config_for(chosen.get(name)), name + ".", chosen, skip=sel)
            continue
        flag = "--" + name.replace("_", "-")
        kw: dict[str, Any] = {"dest": name, "default": argparse.SUPPRESS, "help": helptext}
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is Literal:
            kw["choices"] = list(typing.get_args(tp))
        elif typing.get_origin(tp) is list:
            kw["type"] = lambda s: [v for v in s.split(",") if v]
            kw["metavar"] = "A,B,..."
        elif tp in (int, float, str, Path):
            base = tp
            kw["type"] = (lambda s, b=base: None if s.lower() == "none" else b(s)) \
                if optional else base
        parser.add_argument(flag, **kw)


SELECTORS = ("type", "name")  # the fields that pick a section's config class


def _chosen_types(argv: list[str], data: dict[str, Any]) -> dict[str, str]:
    """The section types named before parsing: ``robot: {type: NAME}`` in the YAML file, and
    ``--robot.type NAME`` (or ``=NAME``) over it."""
    out: dict[str, str] = {}

    def visit(node: dict[str, Any], prefix: str) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                for sel in SELECTORS:
                    if isinstance(v.get(sel), str):
                        out[prefix + k] = v[sel]
                visit(v, prefix + k + ".")

    visit(data, "")
    for i, a in enumerate(argv):
        flag, eq, value = a.partition("=")
        sel = next((s for s in SELECTORS if flag.endswith("." + s)), None)
        if not flag.startswith("--") or sel is None:
            continue
        if not eq:
            if i + 1 >= len(argv):
                continue
            value = argv[i + 1]
        out[flag[2:-len(sel) - 1].replace("-", "_")] = value
    return out


def _merge(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Put flag values (``a.b`` for nested configs) over the YAML mapping."""
    out = dict(data)
    for k, v in overrides.items():
        node = out
        *heads, last = k.split(".")
        for h in heads:
            node[h] = dict(node.get(h) or {})
            node = node[h]
        node[last] = v
    return out


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlac", description="vlac-fleet: real-world robot "
                                     "RL with a vision-language critic.")
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    groups: dict[str, argparse._SubParsersAction] = {}
    top = parser.add_subparsers(dest="command", required=True)
    for path, (_mod, _cls, _fn, helptext) in COMMANDS.items():
        if len(path) == 1:
            sub = top.add_parser(path[0], help=helptext, description=helptext)
        else:
            if path[0] not in groups:
                g = top.add_parser(path[0], help=f"{path[0]} commands")
                groups[path[0]] = g.add_subparsers(dest="subcommand", required=True)
            sub = groups[path[0]].add_parser(path[1], help=helptext, description=helptext)
        sub.set_defaults(_path=path)
        sub.add_argument("--config", type=Path, default=None,
                         help="YAML file with config values; flags override it.")
        # Fields are added lazily in main() so that unused extras are never imported.
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # First pass: find the subcommand, then add its config's flags and parse for real.
    no_help = [a for a in argv if a not in ("-h", "--help")]
    if not no_help or (len(no_help) == 1 and not no_help[0].startswith("-") and len(argv) > 1 \
            and no_help[0] in {p[0] for p in COMMANDS if len(p) > 1}):
        parser.parse_args(argv)  # `vlac -h`, `vlac store -h`
        return 2
    known, _ = parser.parse_known_args(no_help)
    path = getattr(known, "_path", None)
    if path is None:
        parser.parse_args(argv)  # prints the group's help or usage error
        return 2
    mod_name, cls_name, fn_name, helptext = COMMANDS[path]
    module = importlib.import_module(mod_name)
    cls = getattr(module, cls_name)
    sub = argparse.ArgumentParser(prog="vlac " + " ".join(path), description=helptext)
    sub.add_argument("--config", type=Path, default=None,
                     help="YAML file with config values; flags override it.")
    sub.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    config_file = known.config
    try:  # the file first: a section's type (robot: {type: NAME}) decides its flags
        data = load_yaml_dict(config_file) if config_file else {}
        _add_fields(sub, cls, chosen=_chosen_types(argv, data))
    except ConfigError as e:
        print(f"vlac: bad config: {e}", file=sys.stderr)
        return 2
    args = vars(sub.parse_args(_strip_path(argv, path)))
    setup_logging(args.pop("verbose") or known.verbose)
    args.pop("config")
    try:
        cfg = from_dict(cls, _merge(data, args), str(config_file or "flags"))
        getattr(module, fn_name)(cfg)
    except ConfigError as e:
        print(f"vlac: bad config: {e}", file=sys.stderr)
        return 2
    except (ValueError, KeyError, OSError, RuntimeError, TimeoutError) as e:
        # Errors that say what went wrong and how to fix it; -v shows the traceback too.
        if logging.getLogger().isEnabledFor(logging.DEBUG):
            raise
        print(f"vlac: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


def _strip_path(argv: list[str], path: tuple[str, ...]) -> list[str]:
    out, want = [], list(path)
    for a in argv:
        if want and a == want[0]:
            want.pop(0)
            continue
        if a in ("-v", "--verbose") and want:
            continue
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
