"""`sair operator`: run SAIR as a Kubernetes operator, or print what it would patch."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Annotated, Any

import typer

from sair_ray.commands.console import err, fail, out

SA_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
SAMPLES = Path("deploy/samples")


def register(app: typer.Typer) -> None:
    app.command("operator")(operator)


def operator(
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Run the sample RayService + PipelineAutoscaler against a "
                          "simulator and print the patches the operator would send; no "
                          "cluster needed.")] = False,
    namespace: Annotated[str | None, typer.Option(
        help="Namespace to watch (default: the pod's own namespace in a cluster, else "
             "'default').")] = None,
    all_namespaces: Annotated[bool, typer.Option(
        "--all-namespaces", help="Watch every namespace (needs deploy/rbac-cluster.yaml).")]
        = False,
    kubeconfig: Annotated[Path | None, typer.Option(
        help="kubeconfig file (default: in-cluster config inside a pod, else ~/.kube/config)."
    )] = None,
    context: Annotated[str | None, typer.Option(help="kubeconfig context.")] = None,
    data_dir: Annotated[Path | None, typer.Option(
        help="Memory, state and decision log of every autoscaler, under k8s/<namespace>/"
             "<name>/ (default: $SAIR_DATA_DIR or ~/.local/share/sair-ray).")] = None,
    allow_cross_namespace: Annotated[list[str] | None, typer.Option(
        "--allow-cross-namespace", metavar="NAMESPACE",
        help="Let PipelineAutoscalers act on RayServices in NAMESPACE from another "
             "namespace (repeatable; '*': any). Default: only their own namespace.")] = None,
    policy_endpoint: Annotated[list[str] | None, typer.Option(
        "--policy-endpoint", metavar="NAME=URL",
        help="An LLM endpoint PipelineAutoscalers may use, by NAME or URL in "
             "spec.policy.url (repeatable). No other URL is accepted.")] = None,
    policy_api_key_env: Annotated[list[str] | None, typer.Option(
        "--policy-api-key-env", metavar="NAME=VAR",
        help="The operator's environment variable holding the API key of endpoint NAME "
             "(repeatable). Resources cannot name one; an endpoint without it gets no "
             "key.")] = None,
    metrics_address: Annotated[list[str] | None, typer.Option(
        "--metrics-address", metavar="NAME=ADDRESS",
        help="A Ray address PipelineAutoscalers may name, by NAME or ADDRESS, in "
             "spec.metrics.address (repeatable). Default: only each RayService's own head.")]
        = None,
    request_timeout: Annotated[float, typer.Option(
        "--request-timeout", min=0.1, max=600,
        help="Seconds every Kubernetes API call may take; a round whose calls time out "
             "fails (status.error names the call).")] = 10.0,
    rayservice: Annotated[Path, typer.Option(
        help="--dry-run: the RayService manifest.")] = SAMPLES / "rayservice.yaml",
    autoscaler: Annotated[Path, typer.Option(
        help="--dry-run: the PipelineAutoscaler manifest.")] = SAMPLES / "pipelineautoscaler.yaml",
    rounds: Annotated[int, typer.Option(help="--dry-run: decision rounds to simulate.",
                                        min=1, max=1000)] = 5,
    policy: Annotated[str | None, typer.Option(
        help="--dry-run: policy to decide with (default: the manifest's, except that an LLM "
             "policy is replaced by hpa, since a dry run calls no LM endpoint).")] = None,
    profile: Annotated[str | None, typer.Option(
        help="--dry-run: simulator profile (default: spec.metrics.profile).")] = None,
    as_json: Annotated[bool, typer.Option(
        "--json", help="--dry-run: one JSON object per round instead of text.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    """Watch PipelineAutoscaler resources and run one SAIR controller per resource,
    actuating through the RayService each one names (deploy/ has the CRD and RBAC)."""
    from rich.logging import RichHandler

    # A dry run's output is the patches: only warnings go to stderr unless --verbose.
    level = logging.DEBUG if verbose else logging.WARNING if dry_run else logging.INFO
    logging.basicConfig(level=level, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])
    if dry_run:
        _dry_run(rayservice, autoscaler, rounds, policy, profile, as_json)
        return
    from sair_ray.operator.spec import OperatorTrust

    try:
        trust = OperatorTrust.from_flags(
            cross_namespaces=allow_cross_namespace or (), endpoints=policy_endpoint or (),
            api_key_envs=policy_api_key_env or (), metrics_addresses=metrics_address or ())
    except ValueError as e:
        fail(str(e))
    _run(namespace, all_namespaces, kubeconfig, context, data_dir, trust, request_timeout)


def _dry_run(rayservice: Path, autoscaler: Path, rounds: int, policy: str | None,
             profile: str | None, as_json: bool) -> None:
    from sair_ray.operator.dry_run import DryRunError, dry_run, render_patch

    try:
        res = dry_run(rayservice, autoscaler, rounds=rounds, policy=policy, profile=profile)
    except DryRunError as e:
        fail(str(e))
    spec, results = res.spec, res.rounds
    if res.note:
        err.print(f"note: {res.note}", highlight=False)
    if as_json:
        for r in results:
            typer.echo(json.dumps({"round": r.round, "time": r.time, "source": r.source,
                              "arrival_rps": r.arrival_rps, "p99_ms": r.p99_ms,
                              "action": r.action, "error": r.error,
                              "patches": [{"object": p.object, "body": p.body,
                                           "changes": [str(c) for c in p.changes]}
                                          for p in r.patches]}))
        return
    out.print(f"dry run: PipelineAutoscaler {spec.namespace}/{spec.name} -> RayService "
              f"{spec.rayservice_namespace}/{spec.rayservice_name}, application "
              f"{spec.application!r}, policy {res.policy}, simulator "
              f"{profile or spec.metrics.profile}, {rounds} rounds of "
              f"{spec.config.loop.decision_interval_s:g} s", highlight=False)
    for r in results:
        head = (f"round {r.round} t={r.time:g}s load={r.arrival_rps:.1f} req/s "
                f"p99={r.p99_ms:.0f} ms decided by {r.source}")
        out.print(f"\n[bold]{head}[/bold]", highlight=False)
        if r.error:
            out.print(f"  policy error: {r.error}", markup=False, highlight=False)
        if not r.patches:
            out.print("  no patch (allocation unchanged)")
        for p in r.patches:
            out.print(f"  PATCH {p.object} (application/merge-patch+json):", highlight=False)
            for c in p.changes:
                out.print(f"    {c}", markup=False, highlight=False)
            out.print(render_patch(p), markup=False, highlight=False, end="")


def _namespace(namespace: str | None, all_namespaces: bool) -> str | None:
    if all_namespaces:
        return None
    if namespace:
        return namespace
    if SA_NAMESPACE.is_file():
        return SA_NAMESPACE.read_text().strip()
    return "default"


def _api_client(kubeconfig: Path | None, context: str | None) -> Any:
    try:
        from kubernetes import client, config
    except ImportError:
        fail("operator mode needs the kubernetes client: pip install 'sair-ray[k8s]'")
    # No transport retries: urllib3 would otherwise retry a GET that timed out 3 times,
    # so that --request-timeout bounded each attempt but not the call. A call that fails
    # fails its round (or, for a list or watch, is retried by the loop with backoff).
    cfg = client.Configuration()
    try:
        if kubeconfig is None and context is None and os.environ.get("KUBERNETES_SERVICE_HOST"):
            config.load_incluster_config(client_configuration=cfg)
        else:
            config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None,
                                    context=context, client_configuration=cfg)
        cfg.retries = False
        return client.ApiClient(cfg)
    except (config.ConfigException, OSError) as e:
        where = kubeconfig or "~/.kube/config"
        fail(f"no usable Kubernetes configuration ({where}): {e}")


def _run(namespace: str | None, all_namespaces: bool, kubeconfig: Path | None,
         context: str | None, data_dir: Path | None, trust: Any = None,
         request_timeout_s: float = 10.0) -> None:
    from sair_ray.files import base_data_dir
    from sair_ray.operator.loop import Operator

    if namespace and all_namespaces:
        fail("--namespace and --all-namespaces exclude each other")
    op = Operator(_api_client(kubeconfig, context),
                  namespace=_namespace(namespace, all_namespaces),
                  data_dir=base_data_dir(data_dir), trust=trust,
                  request_timeout_s=request_timeout_s)
    stop = threading.Event()

    def on_sigterm(signum: int, frame: object) -> None:  # pod shutdown: stop cleanly
        stop.set()
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    op.run(stop)
