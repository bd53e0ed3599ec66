"""`flagops deploy render|promote|rollback`: the champion's InferenceService by hand.

    flagops deploy render [--params F | --profile P] [-o FILE] [section.key=value ...]
    flagops deploy render --params F --offline --model-version N deploy.storage_uri=s3://...   (no MLflow)
    flagops deploy promote  [--params F | --profile P] [deploy.mode=cluster ...]   canary -> all traffic
    flagops deploy rollback [--params F | --profile P] [deploy.mode=cluster ...]   @champion -> the previous one

MLflow is the config's store (``registry.tracking_uri``, $MLFLOW_TRACKING_URI or ./mlflow.db):
run these in the pipeline's workspace (runs/<profile>) or point them at your server.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from flagops import catalog
from flagops.config import ConfigError, load_config
from flagops.data.formats import atomic_path, write_json


def _config(args: argparse.Namespace):
    if args.profile and args.params:
        raise ConfigError("give either --params FILE or --profile NAME, not both")
    source = args.profile or args.params or "params.yaml"
    if source == "params.yaml" and not Path(source).is_file():
        raise ConfigError("no params.yaml here; pass --params FILE or --profile NAME")
    return load_config(source, args.overrides)


def _regenerate_command(args: argparse.Namespace) -> str:
    """The command line that renders the same YAML, for its header (without -o)."""
    parts = ["flagops deploy render"]
    for flag in ("params", "profile"):
        if getattr(args, flag):
            parts.append(f"--{flag} {getattr(args, flag)}")
    if args.offline:
        parts.append(f"--offline --model-version {args.model_version} --model-path {args.model_path}")
    return " ".join(parts + list(args.overrides))


def cmd_render(args: argparse.Namespace) -> int:
    from flagops.deploy.inference_service import Champion, check_with_sdk, render_inference_service, render_text

    cfg = _config(args)
    if args.offline:
        if args.model_version is None or not cfg.deploy.storage_uri:
            raise ConfigError("--offline needs --model-version N and deploy.storage_uri (MLflow is not asked)")
        champ = Champion(cfg.registry.model_name, args.model_version, cfg.deploy.storage_uri, args.model_path)
        canary = None
    else:
        from flagops.deploy import champion as store
        from flagops.deploy.rollout import next_serving

        client = store.open_registry(cfg)
        name = cfg.registry.model_name
        version = store.champion_version(client, name)
        if version is None:
            raise ConfigError(
                f"{name} has no @champion in {client.tracking_uri} (or no such registered model: registry.model_name); "
                "run the pipeline first or use --offline"
            )
        state = next_serving(store.serving(client, name, cfg.deploy), version, cfg.deploy.canary_traffic_percent)
        champ, canary = store.champion(client, name, version, cfg.deploy), state.canary_traffic_percent
    doc = render_inference_service(cfg.deploy, cfg.serve, champ, canary_traffic_percent=canary)
    check_with_sdk(doc)
    text = render_text(doc, _regenerate_command(args))
    if args.output == "-":
        sys.stdout.write(text)
    else:
        with atomic_path(args.output) as tmp:
            tmp.write_text(text, encoding="utf-8")
    return 0


def cmd_move(args: argparse.Namespace) -> int:
    from flagops.deploy import rollout

    cfg = _config(args)
    record = (rollout.promote_canary if args.deploy_command == "promote" else rollout.rollback)(cfg, Path(args.manifest))
    write_json(args.record, record)
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--params", help="a params YAML (default: ./params.yaml)")
    p.add_argument("--profile", help="a built-in profile: tiny, demo")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")


def add_deploy_commands(subparsers) -> None:
    """Add `flagops deploy render|promote|rollback` to the top-level CLI's subparsers."""
    deploy = subparsers.add_parser("deploy", help="the champion on KServe: render, promote a canary, roll back")
    sub = deploy.add_subparsers(dest="deploy_command", required=True)

    p = sub.add_parser("render", help="print the champion's InferenceService YAML")
    _common(p)
    p.add_argument("-o", "--output", default="-", help="file to write (default: stdout)")
    p.add_argument("--offline", action="store_true", help="render without MLflow: deploy.storage_uri and --model-version")
    p.add_argument("--model-version", type=int, help="with --offline: the registered version it serves")
    p.add_argument("--model-path", default="artifacts/candidate", help="with --offline: the model directory inside the storage URI")
    p.set_defaults(func=cmd_render)

    outs = {a.name: a.path for a in catalog.get("deploy_model").outputs}
    for name, text in (
        ("promote", "send all traffic to the canary (deploy.mode decides: print the patch, serve, or kubectl apply)"),
        ("rollback", "move @champion back to the previous champion and deploy it with all traffic"),
    ):
        p = sub.add_parser(name, help=text)
        _common(p)
        p.add_argument("--manifest", default=outs["inference_service"], help=f"YAML to write (default: {outs['inference_service']})")
        p.add_argument("--record", default=outs["deployment"], help=f"record to write (default: {outs['deployment']})")
        p.set_defaults(func=cmd_move)
