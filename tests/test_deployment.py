"""deployment/: the Kubernetes manifests and the Compose file pass their schemas (offline) and agree
with each other and with the server's flags; the Dockerfile runs the commands of deployment/README.md;
every manifest that listens beyond loopback requires an API key kept out of the command line; the
example --config file is valid."""

from __future__ import annotations

import json
import re
import shlex
import threading
import time
from importlib import resources

import pytest

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")
jsonschema = pytest.importorskip("jsonschema")

from mili.exercise import repo_root
from mili.server.cli import API_KEY_ENV, build_parser, parse_args

DEPLOYMENT = repo_root() / "deployment"
ABORT_GRACE_S = 5  # mili.server.cli: after the drain, aborted streams get this long to finish


def _docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((DEPLOYMENT / "kubernetes" / name).read_text()) if d]


def _flag(args: list[str], flag: str) -> str:
    return args[args.index(flag) + 1]


@pytest.mark.parametrize("name", ["deployment.yaml", "service.yaml", "hpa.yaml"])
def test_kubernetes_manifests_pass_the_schema(name):
    for doc in _docs(name):
        kubernetes_validate.validate(doc, kubernetes_validate.latest_version(), strict=True)


def test_the_deployment_serves_on_a_gpu_with_probes_and_a_graceful_drain():
    (deployment,) = _docs("deployment.yaml")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = build_parser().parse_args(container["args"])  # the server accepts its arguments
    assert args.host == "0.0.0.0"
    port = {p["name"]: p["containerPort"] for p in container["ports"]}["http"]
    assert port == args.port
    gpus = str(args.tensor_parallel_size)  # one GPU per rank of the model
    assert container["resources"]["requests"]["nvidia.com/gpu"] == container["resources"]["limits"]["nvidia.com/gpu"] == gpus
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    needed = int(pre_stop[1]) + args.shutdown_timeout + ABORT_GRACE_S
    assert pod["terminationGracePeriodSeconds"] >= needed, (
        f"terminationGracePeriodSeconds must cover preStop + --shutdown-timeout + {ABORT_GRACE_S} s = {needed}")
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert args.model.startswith(mounts["models"] + "/")
    assert {v["name"] for v in pod["volumes"]} == set(mounts)
    shm = next(v for v in pod["volumes"] if v["name"] == "shm")
    assert mounts["shm"] == "/dev/shm" and shm["emptyDir"]["medium"] == "Memory", "NCCL between ranks needs shared memory"
    assert pod["securityContext"]["runAsNonRoot"] is True


def test_the_service_selects_the_deployment_and_targets_its_port():
    (deployment,), (service,) = _docs("deployment.yaml"), _docs("service.yaml")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    names = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= names


def test_the_autoscaler_scales_the_deployment_on_a_metric_the_server_exports():
    from mili.server.metrics import ServerMetrics

    (deployment,), (hpa,) = _docs("deployment.yaml"), _docs("hpa.yaml")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count: `kubectl apply` would reset it"
    assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    # the Prometheus adapter turns a series of /metrics into the custom metric the HPA reads
    adapter = yaml.safe_load((DEPLOYMENT / "prometheus-adapter-values.yaml").read_text())
    (rule,) = adapter["rules"]["custom"]
    series = rule["seriesQuery"].split("{")[0]
    assert re.sub(rule["name"]["matches"], rule["name"]["as"].replace("${1}", r"\1"), series) == name
    exported = {m.name for m in ServerMetrics("m").registry.collect()}
    assert series in exported, f"{series} is not a metric of mili serve ({sorted(exported)})"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}


def test_the_server_is_warm_before_it_says_ready():
    from mili.server.cli import EngineLoader

    args = build_parser().parse_args(["--model", str(repo_root() / "data" / "mili-tiny-qwen3"), "--device", "cpu",
                                      "--num-kv-blocks", "64"])
    engine, _ = EngineLoader(args)()  # /health turns 200 only once this returns
    assert engine.num_steps >= 2, "the loader must run a warm-up request (a prefill and a decode) before ready"
    assert engine.stats()["prefix_cache_hit_tokens"] > 0, \
        "the warm-up must also run a prefill over a cached prefix (its kernel compiles on first use)"
    assert engine.block_manager.stats.cached_blocks == 0, "the warm-up prompt must leave nothing in the prefix cache"


def test_the_readiness_probe_fails_until_the_warm_up_has_run(monkeypatch):
    """The manifests' readiness probe reads /health: 503 while the model loads and warms up, then 200."""
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from mili.server import cli
    from mili.server.app import ServerConfig, build_app

    warming, release = threading.Event(), threading.Event()
    real_warm_up = cli.warm_up

    def slow_warm_up(llm):
        warming.set()
        assert release.wait(30)
        real_warm_up(llm)

    monkeypatch.setattr(cli, "warm_up", slow_warm_up)
    args = build_parser().parse_args(["--model", str(repo_root() / "data" / "mili-tiny-qwen3"), "--device", "cpu",
                                      "--num-kv-blocks", "64"])
    with TestClient(build_app(cli.EngineLoader(args), ServerConfig(model_name="tiny"))) as client:
        assert warming.wait(60), "the loader never reached the warm-up"
        response = client.get("/health")
        assert (response.status_code, response.json()) == (503, {"status": "starting"})
        release.set()
        deadline = time.monotonic() + 30
        while client.get("/health").status_code != 200:
            assert time.monotonic() < deadline, "/health never said 200 after the warm-up"
            time.sleep(0.05)


def _compose() -> dict:
    return yaml.safe_load((DEPLOYMENT / "docker-compose.yml").read_text())


def test_compose_file_passes_the_compose_spec_schema():
    schema = json.loads(resources.files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
                        .read_text())
    jsonschema.validate(_compose(), schema)


def _seconds(duration: str) -> float:
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1}[u] for n, u in re.findall(r"(\d+(?:\.\d+)?)([hms])", duration))


def test_compose_stops_after_the_drain_and_prometheus_scrapes_the_server():
    services = _compose()["services"]
    args = build_parser().parse_args([a.replace("${MILI_MODEL:-", "").rstrip("}") for a in services["mili"]["command"]])
    assert _seconds(services["mili"]["stop_grace_period"]) >= args.shutdown_timeout + ABORT_GRACE_S
    assert services["mili"]["ports"] == [f"{args.port}:{args.port}"]
    prometheus = yaml.safe_load((DEPLOYMENT / "prometheus.yml").read_text())
    (job,) = prometheus["scrape_configs"]
    assert job["metrics_path"] == "/metrics" and job["static_configs"][0]["targets"] == [f"mili:{args.port}"]


def _instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n\s*", " ", (DEPLOYMENT / "Dockerfile").read_text())
    return [tuple(line.split(None, 1)) for line in text.splitlines() if line.strip() and not line.startswith("#")]


def test_dockerfile_is_multi_stage_cuda_non_root_with_a_healthcheck():
    steps = _instructions()
    froms = [rest for op, rest in steps if op == "FROM"]
    assert len(froms) >= 2 and all(f.startswith("${CUDA_IMAGE}") for f in froms)
    assert any(op == "ARG" and rest.startswith("CUDA_IMAGE=nvidia/cuda:") for op, rest in steps)
    user = [rest for op, rest in steps if op == "USER"]
    assert user and user[-1] not in ("root", "0")
    (health,) = [rest for op, rest in steps if op == "HEALTHCHECK"]
    assert "/health" in health
    expose = [rest for op, rest in steps if op == "EXPOSE"]
    assert expose == ["8000"]
    entry = json.loads(next(rest for op, rest in steps if op == "ENTRYPOINT"))
    cmd = json.loads(next(rest for op, rest in steps if op == "CMD"))
    assert entry == ["mili", "serve"]
    assert build_parser().parse_args(cmd).port == 8000


def test_dockerfile_runs_the_readme_commands():
    readme = (DEPLOYMENT / "README.md").read_text()
    block = re.search(r"## Without a container.*?```bash\n(.*?)```", readme, re.DOTALL).group(1).strip().splitlines()
    install, serve = block[0], block[1]
    runs = [rest for op, rest in _instructions() if op == "RUN"]
    assert install in runs, f"the Dockerfile must install with the README's command {install!r}"
    steps = dict(_instructions())
    command = json.loads(steps["ENTRYPOINT"]) + json.loads(steps["CMD"])
    assert command == shlex.split(serve.replace("data/", "/app/data/")), (
        f"the image runs {command}, the README says {serve!r}")


def test_the_kubernetes_deployment_requires_a_key_from_a_secret():
    (deployment,) = _docs("deployment.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = build_parser().parse_args(container["args"])
    assert args.require_api_key and args.api_key is None, "the key must not be an argument (kubectl describe shows it)"
    env = {e["name"]: e for e in container["env"]}
    assert env[API_KEY_ENV]["valueFrom"]["secretKeyRef"] == {"name": "mili-api-key", "key": "api-key"}
    assert "kubectl create secret generic mili-api-key" in (DEPLOYMENT / "README.md").read_text()


def test_compose_reads_the_key_from_a_secret_file():
    compose = _compose()
    command = compose["services"]["mili"]["command"]
    args = build_parser().parse_args([a.replace("${MILI_MODEL:-", "").rstrip("}") for a in command])
    assert args.require_api_key and args.api_key is None
    (secret,) = compose["services"]["mili"]["secrets"]
    assert str(args.api_key_file) == f"/run/secrets/{secret}"
    assert compose["secrets"][secret]["file"] == "./mili-api-key"
    assert "deployment/mili-api-key" in (repo_root() / ".gitignore").read_text().splitlines()


def test_the_image_refuses_to_start_without_a_key():
    cmd = json.loads(next(rest for op, rest in _instructions() if op == "CMD"))
    args = build_parser().parse_args(cmd)
    assert args.host == "0.0.0.0" and args.require_api_key and args.api_key is None


def test_the_example_config_file_is_valid(monkeypatch):
    monkeypatch.setenv(API_KEY_ENV, "k")
    path = DEPLOYMENT / "server_config.yaml"
    args = parse_args(["--config", str(path)])
    for key, value in yaml.safe_load(path.read_text()).items():
        assert getattr(args, key.replace("-", "_")) == value, key
    assert parse_args(["--config", str(path), "--port", "9000"]).port == 9000
