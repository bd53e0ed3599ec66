"""deploy_long_context: the long-context champion as a KServe InferenceService on the Hugging Face
LLM runtime (vLLM, one GPU, ``--max_model_len`` = the extended window). ``deploy.mode`` cluster
applies it; dry-run and local only write it (the runtime needs a GPU cluster, not this machine)."""

from __future__ import annotations

from pathlib import Path

from flagops.data.formats import DataError, atomic_path, read_json
from flagops.deploy import apply, rollout
from flagops.deploy import champion as store
from flagops.deploy.inference_service import render_text
from flagops.longctx import serving


def run(cfg, inputs: dict[str, Path], outputs: dict[str, Path]) -> dict[str, Path]:
    record = read_json(inputs["longctx_registration"])
    if not isinstance(record, dict) or "promotion" not in record:
        raise DataError(f"{inputs['longctx_registration']}: no promotion in it; pass register_long_context's output")
    client = store.open_registry(cfg)
    name = record["name"]
    version = rollout.champion_of(record["promotion"], store.champion_version(client, name))
    mv = client.get_model_version(name, str(version))
    uri = serving.storage_uri(client.get_model_version_download_uri(name, str(version)), cfg.deploy.artifacts_destination)
    lineage = ("git_commit", "data_md5", "model_sha256", "base_lm_sha256", "longctx.factor", "longctx.rope_theta")
    facts = {
        "name": name,
        "version": version,
        "max_model_len": int(mv.tags["longctx.max_position_embeddings"]),
        "tags": {k: mv.tags[k] for k in lineage if k in mv.tags},
    }
    cluster = cfg.deploy.mode == "cluster"
    doc = serving.render(cfg, facts, uri, cluster=cluster)
    manifest = Path(outputs["longctx_inference_service"])
    with atomic_path(manifest) as tmp:
        tmp.write_text(render_text(doc, "flagops step deploy_long_context"), encoding="utf-8")
    if cluster:
        apply.kubectl_apply(manifest)
        apply.wait_ready(doc, cfg.deploy.ready_timeout_s)
    else:
        print(
            f"deploy_long_context: wrote {manifest} ({name} v{version}, max_model_len {facts['max_model_len']}); "
            f"apply it with `kubectl apply -f {manifest}` on a cluster with KServe and GPUs"
        )
    return outputs
