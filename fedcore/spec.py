"""The FederatedJob resource as typed models: the single source of truth.

The same models validate a job file for ``fedkube run``, parse the object the operator
receives from the API server, and generate the CRD's OpenAPI schema (``make crds``). Field
names are camelCase on the wire (Kubernetes style) and snake_case in Python.

Errors never surface as raw pydantic output: ``parse_job`` turns them into a ``SpecError``
whose lines name the field (``spec.clients[1].name``), the offending value and the fix.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import Annotated, Any, Final, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from fedcore import spec_messages, spec_objects, spec_wire
from fedcore.errors import SpecError

API_GROUP = "fedkube.io"
API_VERSION = "v1alpha1"
KIND = "FederatedJob"
PLURAL = "federatedjobs"

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
JOB_NAME = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
"""A DNS-1035 label: the job's name prefixes Service names, which must start with a letter."""
ENTRYPOINT = r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$"
ENDPOINT = r"^https?://[^\s/]+(/.*)?$"
BUCKET = r"^[a-z0-9][a-z0-9.-]*[a-z0-9]$"
_SEGMENT = r"(?:[^/.][^/]*|\.[^/.][^/]*|\.\.[^/]+)"
PREFIX = rf"^(?:{_SEGMENT}(?:/{_SEGMENT})*/?)?$"
"""A relative key path: no leading '/', no empty, '.' or '..' segment (one trailing '/' is fine).
A pattern rather than a validator, so the CRD carries the very same rule."""
MAX_CLIENT_NAME = 40
"""Client names become parts of Service, Job and pod host names (63-character DNS labels)."""
MAX_HOST_NAME = 63
"""DNS label limit of names derived from the job's (``<job>-<client>-<index>``)."""
MAX_JOB_NAME = MAX_HOST_NAME - len("-aggregator")
"""Longest job name (``metadata.name``) whose aggregator Job name still fits in a DNS label."""
MAX_MESSAGE = 32768
"""Bound of free-text status messages (as metav1.Condition's); writers truncate longer text."""
RESERVED_CLIENT_NAMES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "aggregator": "the aggregator Job is named '<job>-aggregator'",
        "commit": "the commit signing key Secret is named '<job>-commit-key'",
    }
)
"""Client names whose objects would take another child's name (value: whose)."""
MAX_CLIENTS = 256
MAX_HISTORY = 50
"""Rounds kept in ``status.history``: enough for a plot, small enough for an etcd object."""

LabelValue = Annotated[str, Field(max_length=63)]
K8sObject = Annotated[
    dict[str, Any], Field(json_schema_extra={"x-kubernetes-preserve-unknown-fields": True})
]
"""A Kubernetes sub-object passed through verbatim (tolerations, volumes ...); the API server
validates it when the operator puts it into a pod template."""
EnvVar = Annotated[
    dict[str, Any],
    AfterValidator(spec_objects.check_env_var),
    Field(json_schema_extra=spec_objects.ENV_VAR_SCHEMA),
]
"""A container env entry (name, value or valueFrom): name and value are checked here (and in
the CRD) because the operator refuses reserved names and a pod refuses a numeric value."""
Resources = Annotated[
    dict[str, Any],
    AfterValidator(spec_objects.check_resources),
    Field(json_schema_extra=spec_objects.RESOURCES_SCHEMA),
]
"""Container resources; ``limits``/``requests`` must be mappings (the GPU limit is compared
with ``procsPerReplica``), the quantities pass through."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
        use_attribute_docstrings=True,
    )


UpdateDtype = Literal["float32", "bfloat16", "float16", "int8"]
"""Wire formats of clients' float deltas (``strategy.updateDtype``)."""
MOVED_TASK_KEYS: Final[dict[str, str]] = {
    "updateDtype": "strategy.updateDtype (float32, bfloat16, float16 or int8, for every client)",
}
"""Task-config keys fedkube once read itself, and the typed field that replaced each."""


def _moved_keys(where: str, config: dict[str, Any]) -> list[str]:
    return [
        f"{where}.{key} moved to spec.{field}; set it there and remove {key} from {where}"
        for key, field in MOVED_TASK_KEYS.items()
        if key in config
    ]


class TaskSpec(_Model):
    entrypoint: Annotated[str, Field(pattern=ENTRYPOINT, max_length=253)]
    """``module:attr`` naming the task object (model, data, local training, evaluation);
    the module must be importable in the runtime image."""
    config: K8sObject = Field(default_factory=dict)
    """Free-form task settings (hyper-parameters, data options), passed to the task as is."""

    @model_validator(mode="after")
    def _no_moved_keys(self) -> TaskSpec:
        problems = _moved_keys("config", self.config)
        if problems:
            raise ValueError("\n".join(problems))
        return self


class SecretRef(_Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Secret in the job's namespace holding the S3 credentials."""
    access_key_id_key: Annotated[str, Field(min_length=1, max_length=253)] = "AWS_ACCESS_KEY_ID"
    """Key inside the Secret holding the access key id."""
    secret_access_key_key: Annotated[str, Field(min_length=1, max_length=253)] = (
        "AWS_SECRET_ACCESS_KEY"
    )
    """Key inside the Secret holding the secret access key."""


class TrackingSecretRef(_Model):
    name: Annotated[str, Field(min_length=1, max_length=253)]
    """Secret in the job's namespace with MLflow's own variables: ``MLFLOW_TRACKING_TOKEN``,
    or ``MLFLOW_TRACKING_USERNAME`` and ``MLFLOW_TRACKING_PASSWORD``; only the aggregator
    pod gets them."""


class MlflowSpec(_Model):
    uri: Annotated[str, Field(pattern=ENDPOINT, max_length=2048)]
    """The tracking server, e.g. ``http://mlflow.mlflow:5000``; reached by the aggregator."""
    experiment: Annotated[str, Field(min_length=1, max_length=256)] = "fedkube"
    """Experiment the job's run goes in; created when missing."""
    secret_ref: TrackingSecretRef | None = None
    """Credentials for the server (cluster runs). Unset: none, or the aggregator's
    environment (``fedkube run`` passes the ``MLFLOW_TRACKING_*`` variables on to it)."""


class TrackingSpec(_Model):
    mlflow: MlflowSpec | None = None
    """Log parameters, every round's metrics and the final model's URI to MLflow
    (``fedcore.tracking``). A server that is down never fails or slows the job."""


class StorageSpec(_Model):
    endpoint: Annotated[str | None, Field(pattern=ENDPOINT, max_length=2048)] = None
    """S3 endpoint URL (MinIO, Ceph RGW, AWS). Unset: ``fedkube run`` uses a local directory."""
    bucket: Annotated[str, Field(min_length=3, max_length=63, pattern=BUCKET)] = "fedkube"
    """Bucket holding every round of the job; must exist."""
    prefix: Annotated[str, Field(max_length=512, pattern=PREFIX)] = ""
    """Key prefix for this job. Empty: ``fedkube/<namespace>/<name>-<uid8>/``, unique per job."""
    region: Annotated[str, Field(min_length=1, max_length=64)] = "us-east-1"
    """Signing region; S3-compatible stores accept any value."""
    secret_ref: SecretRef | None = None
    """Credentials Secret (cluster runs). Unset: the standard AWS environment variables."""
    credentials: Literal["scoped", "shared"] = "scoped"
    """``scoped``: the job's credential never reaches a pod; each role (the aggregator, each
    client) gets its own temporary credential (STS AssumeRole), limited to the keys it needs
    and rotated, so participants cannot read or overwrite each other's updates. A store
    without STS fails the job at once. ``shared``: every pod gets the job's own credential
    (no isolation between participants), for stores without STS."""
    role_arn: Annotated[str | None, Field(min_length=20, max_length=2048, pattern=r"^arn:\S+$")] = (
        None
    )
    """IAM role the job's credential assumes to mint scoped credentials: required on AWS S3
    and Ceph RGW; MinIO ignores it (the parent user's policy applies)."""


FEDOPT = ("fedadam", "fedyogi", "fedadagrad")
"""The FedOpt strategies, which take ``beta1`` and ``tau`` (and, but FedAdagrad, ``beta2``)."""
ROBUST = ("median", "trimmedmean", "krum")
"""The robust strategies: unweighted (or selecting), so they take no weight cap, clipping or
server learning rate."""
DEFAULT_TRIM_FRACTION = 0.2
"""``trimmedmean``'s ``trimFraction`` when unset (Flower's FedTrimmedAvg default)."""
DP = "dpfedavg"
"""The differentially private strategy, the one that takes ``strategy.dp``."""
DISK_ACCUMULATOR = (
    "fedavg",
    "fedprox",
    "fedavgm",
    "fedadam",
    "fedyogi",
    "fedadagrad",
    "dpfedavg",
)
"""The strategies that can keep their accumulator on disk (``aggregator.accumulator: disk``),
the weighted sums, whose server state (momentum, moments) goes to disk with the sum: the
others keep state of the model's size in memory anyway (scaffold's control variates) or
keep the round's updates (median, trimmedmean, krum)."""
FSDP_REFUSES_STRATEGIES = ("scaffold", "fedprox")
"""Strategies a ``parallelism.mode: fsdp`` client cannot train for: their client-side state
(control variates, the proximal term's anchor) assumes whole tensors on every rank."""
QUANTITY = r"^[0-9]+(\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$"
"""A Kubernetes resource quantity without sign or exponent (``200Gi``, ``1.5T``)."""


class AdaptiveClippingSpec(_Model):
    """Adaptive clipping (Andrew et al., 2021): the bound follows a quantile of the clients'
    update norms, estimated privately from a noised count of unclipped updates."""

    target_unclipped_quantile: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.5
    """Share of updates the bound should leave unclipped (``gamma``; 0.5: the median norm)."""
    learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 0.2
    """Step of the geometric bound update ``C <- C exp(-lr (unclipped share - gamma))`` (Andrew
    et al. use 0.2)."""
    clipped_count_stddev: Annotated[float, Field(gt=0.0, le=1e6)]
    """Standard deviation of the Gaussian noise on the count of unclipped updates (Andrew et
    al. suggest expected clients per round / 20). Must be more than ``noiseMultiplier / 2``:
    this count spends privacy budget too, and the updates' own noise is raised to make up for
    it (``fedcore.strategies.dpfedavg``)."""


class DPSpec(_Model):
    """Client-level differential privacy for ``dpfedavg`` (DP-FedAvg, McMahan et al., 2018)."""

    noise_multiplier: Annotated[float, Field(gt=0.0, le=1e3)]
    """``z``: the Gaussian noise's standard deviation in units of the clipping bound, on the
    sum of the clipped updates (with adaptive clipping, of the update and count queries
    together). Larger: more privacy per round, a noisier model (e.g. 0.5 to 2)."""
    clip_norm: Annotated[float, Field(gt=0.0, le=1e9)]
    """``C``: each client's delta is scaled down to this L2 norm (over all its float tensors)
    before it is summed; with ``adaptiveClipping``, the first round's bound."""
    delta: Annotated[float, Field(gt=0.0, lt=1.0)]
    """The ``delta`` of the (epsilon, delta) guarantee the job reports (at the client level).
    Pick it below 1/(number of clients), e.g. 1e-5; there is no default because it is a policy
    decision of the job's owner."""
    target_epsilon: Annotated[float | None, Field(gt=0.0, le=1e6)] = None
    """Privacy budget: the job finishes (succeeded, with the last committed model) before a
    round whose commit would take epsilon past it. Unset: all ``rounds`` run, epsilon is
    reported only."""
    adaptive_clipping: AdaptiveClippingSpec | None = None
    """Set: the bound adapts every round (``clipNorm`` is the first round's). Unset: fixed."""

    @model_validator(mode="after")
    def _count_noise_leaves_update_noise(self) -> DPSpec:
        adaptive = self.adaptive_clipping
        if adaptive is not None and 2 * adaptive.clipped_count_stddev <= self.noise_multiplier:
            raise ValueError(
                f"adaptiveClipping.clippedCountStddev={adaptive.clipped_count_stddev} must be "
                f"more than noiseMultiplier/2 ({self.noise_multiplier / 2:g}): the noised count "
                "of unclipped updates spends privacy budget, and below that it would need all of "
                "it; raise clippedCountStddev (e.g. expected clients per round / 20, at least "
                "noiseMultiplier) or lower noiseMultiplier"
            )
        return self


class StrategySpec(_Model):
    name: Literal[
        "fedavg",
        "fedavgm",
        "fedadam",
        "fedyogi",
        "fedadagrad",
        "fedprox",
        "median",
        "trimmedmean",
        "krum",
        "dpfedavg",
        "scaffold",
    ] = "fedavg"
    """``fedavg``: sample-weighted mean of client deltas. ``fedavgm``: FedAvg with server
    momentum (Hsu et al., 2019), which helps on non-IID data. ``fedadam``, ``fedyogi``,
    ``fedadagrad``: FedOpt (Reddi et al., 2021), an adaptive server optimizer driven by the
    averaged delta; give them a small ``serverLearningRate`` (e.g. 0.01 to 0.1). ``fedprox``:
    FedAvg on the server and FedProx's proximal term (Li et al., 2020) in every client's
    loss; needs ``proximalMu``. ``median``, ``trimmedmean``, ``krum``: robust aggregation
    (coordinate-wise median, trimmed mean with ``trimFraction``, Krum/Multi-Krum with
    ``byzantineClients`` and ``krumSelect``); they count every update once, ignoring
    ``num_samples`` (Multi-Krum weighs the updates it selects by it). ``dpfedavg``:
    DP-FedAvg (McMahan et al., 2018), client-level differential privacy: equal client
    weights, clipped updates, Gaussian noise on the server; needs ``dp``. ``scaffold``:
    SCAFFOLD (Karimireddy et al., 2020), FedAvg plus control variates that correct each
    client's local gradient for client drift on non-IID data; the clients' local optimizer
    must be SGD, with or without momentum (``task.config.optimizer: sgd``), not Adam."""
    min_clients: Annotated[int | None, Field(ge=1)] = None
    """Updates a round needs before it may close at its deadline. Unset: every client."""
    fraction_fit: Annotated[float, Field(gt=0.0, le=1.0)] = 1.0
    """Share of the available clients selected each round (at least ``minClients``)."""
    round_timeout_seconds: Annotated[int, Field(ge=1, le=7 * 24 * 3600)] = 600
    """Seconds a round waits for its selected clients before closing with a quorum."""
    server_learning_rate: Annotated[float, Field(gt=0.0, le=10.0)] = 1.0
    """Scale applied to the averaged update (1.0 is plain FedAvg)."""
    server_momentum: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Momentum of the server optimizer; ``fedavgm`` only."""
    max_weight_share: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    """Largest share of a round any one client may weigh (e.g. 0.25); the excess goes to the
    others pro rata. With fewer than ``1/maxWeightShare`` clients in a round the shares are
    equal. Unset: shares are the plain ``num_samples`` ratios (one client declaring a huge
    count sets the model)."""
    clip_norm: Annotated[float | None, Field(gt=0.0, le=1e9)] = None
    """Bound on each update's L2 norm (over all its float tensors): a larger delta is scaled
    down to it. With ``clipQuantile``, the first round's bound. Unset: no clipping."""
    clip_quantile: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    """Adaptive clipping: each round clips at this quantile of the previous round's update
    norms (e.g. 0.5, the median); needs ``clipNorm`` for the first round."""

    beta1: Annotated[float | None, Field(ge=0.0, lt=1.0)] = None
    """FedOpt's first-moment decay (``fedadam``, ``fedyogi``, ``fedadagrad``). Unset: 0.9."""
    beta2: Annotated[float | None, Field(ge=0.0, lt=1.0)] = None
    """FedOpt's second-moment decay (``fedadam``, ``fedyogi``). Unset: 0.99."""
    tau: Annotated[float | None, Field(gt=0.0, le=1.0)] = None
    """FedOpt's adaptivity floor, added to ``sqrt(v)`` (``fedadam``, ``fedyogi``,
    ``fedadagrad``). Unset: 1e-3, as Reddi et al. recommend."""

    proximal_mu: Annotated[float | None, Field(ge=0.0, le=1e4)] = None
    """FedProx's ``mu``: each client adds ``mu/2 ||w - w_global||^2`` to its local loss on
    every rank (e.g. 0.01 to 1). Required by ``fedprox``; with another strategy it adds the
    term to that strategy's clients. Unset or 0: no term."""

    trim_fraction: Annotated[float | None, Field(gt=0.0, lt=0.5)] = None
    """``trimmedmean`` only: share of the values trimmed at each end of every coordinate
    (e.g. 0.2 drops the 20% largest and 20% smallest), in (0, 0.5). Unset: 0.2."""
    byzantine_clients: Annotated[int | None, Field(ge=0, le=1000)] = None
    """``krum`` only: how many hostile updates a round must withstand (``f``); Krum needs a
    quorum of at least ``2f + 3``. Unset: 0."""
    krum_select: Annotated[int | None, Field(ge=1, le=1024)] = None
    """``krum`` only: updates kept and averaged (1: Krum, more: Multi-Krum); at most the
    quorum minus ``byzantineClients``. Unset: 1."""

    dp: DPSpec | None = None
    """``dpfedavg`` only (and required by it): noise, clipping and the privacy budget."""

    update_dtype: UpdateDtype = "float32"
    """How clients' float deltas travel: ``float32`` (exact), ``bfloat16`` or ``float16``
    (half the bytes; float16 keeps more mantissa, bfloat16 more range) or ``int8`` (a
    quarter: symmetric per-slice quantisation, one float32 scale per 4096 values, dequantised
    slice by slice by the aggregator; ``fedcore.quantization``). The aggregator accepts
    deltas narrower than the model's only when this is not ``float32``; the accuracy each
    costs is measured in docs/tasks.md."""

    @model_validator(mode="after")
    def _dp_options_need_dpfedavg(self) -> StrategySpec:
        if self.name == DP and self.dp is None:
            raise ValueError(
                "dpfedavg needs dp: set strategy.dp with noiseMultiplier, clipNorm and delta "
                "(e.g. {noiseMultiplier: 1.0, clipNorm: 1.0, delta: 1e-5})"
            )
        problems = []
        if self.dp is not None and self.name != DP:
            problems.append(f"dp applies to {DP} only; set strategy.name: {DP}, or remove dp")
        if self.name == DP:
            for field, value in (
                ("maxWeightShare", self.max_weight_share),
                ("clipNorm", self.clip_norm),
                ("clipQuantile", self.clip_quantile),
            ):
                if value is not None:
                    problems.append(
                        f"{field}={value} does not apply to {DP}, which weighs every client "
                        f"equally and clips with dp.clipNorm (and dp.adaptiveClipping); remove "
                        f"{field}"
                    )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _robust_options_need_their_strategy(self) -> StrategySpec:
        problems = []
        for field, value, names in (
            ("trimFraction", self.trim_fraction, ("trimmedmean",)),
            ("byzantineClients", self.byzantine_clients, ("krum",)),
            ("krumSelect", self.krum_select, ("krum",)),
        ):
            if value is not None and self.name not in names:
                problems.append(
                    f"{field}={value} applies to {', '.join(names)} only; set strategy.name "
                    f"to it, or remove {field}"
                )
        if self.name in ROBUST:
            for field, value, unset in (
                ("maxWeightShare", self.max_weight_share, None),
                ("clipNorm", self.clip_norm, None),
                ("serverLearningRate", self.server_learning_rate, 1.0),
            ):
                if value != unset:
                    problems.append(
                        f"{field}={value} does not apply to {self.name}, which counts every "
                        f"update once and bounds its pull by itself; remove {field}"
                    )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _fedprox_needs_mu(self) -> StrategySpec:
        if self.name == "fedprox" and self.proximal_mu is None:
            raise ValueError(
                "fedprox needs proximalMu, the weight of the proximal term (e.g. 0.01); "
                "set strategy.proximalMu"
            )
        return self

    @model_validator(mode="after")
    def _fedopt_options_need_fedopt(self) -> StrategySpec:
        problems = []
        for field, value, names in (
            ("beta1", self.beta1, FEDOPT),
            ("tau", self.tau, FEDOPT),
            ("beta2", self.beta2, ("fedadam", "fedyogi")),
        ):
            if value is not None and self.name not in names:
                problems.append(
                    f"{field}={value} applies to {', '.join(names)} only; set strategy.name "
                    f"to one of them, or remove {field}"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _clip_quantile_needs_clip_norm(self) -> StrategySpec:
        if self.clip_quantile is not None and self.clip_norm is None:
            raise ValueError(
                f"clipQuantile={self.clip_quantile} needs clipNorm, the first round's bound "
                "(no norm has been measured yet); set clipNorm too, or remove clipQuantile"
            )
        return self

    @model_validator(mode="after")
    def _momentum_needs_fedavgm(self) -> StrategySpec:
        if self.name != "fedavgm" and self.server_momentum != 0.0:
            raise ValueError(
                f"serverMomentum={self.server_momentum} applies to fedavgm only; "
                "set strategy.name: fedavgm, or remove serverMomentum"
            )
        return self


class AggregatorSpec(_Model):
    resources: Resources = Field(default_factory=dict)
    """Pod resources of the aggregator (it needs about 2x the model's size in memory; 3x for
    fedavgm, 4x for fedadam, fedyogi and fedadagrad, 5x for scaffold; median, trimmedmean and
    krum also need the round's updates on local disk, N x the model's size; with
    ``accumulator: disk``, a constant ~100 MiB plus the task's evaluation model, whatever the
    strategy)."""
    accumulator: Literal["memory", "disk"] = "memory"
    """Where the weighted-sum strategies (fedavg, fedprox, fedavgm, fedadam, fedyogi,
    fedadagrad, dpfedavg) keep the round's running sum and their server state. ``memory``: 8
    bytes per parameter of RAM (2x a float32 model), plus fedavgm's momentum (1x) or
    fedopt's two moments (2x), the fastest. ``disk``: the same sum and state in files on the
    aggregator's local disk (an emptyDir, see ``scratchSizeLimit``), folded and stepped
    slice by slice, so the aggregator's memory no longer grows with the model (disk: 2x the
    model, plus the base and the new model, 4x in all; fedavgm 3 and fedopt 6 more models'
    worth for the previous, new and uploaded state); each fold then reads and writes the sum
    once more. Memory is the default because most models fit, and it needs no disk; choose
    disk when the model's multiple does not fit the aggregator's memory. Same result bit for
    bit either way. scaffold, median, trimmedmean and krum refuse disk."""
    scratch_size_limit: Annotated[str | None, Field(pattern=QUANTITY, max_length=32)] = None
    """``sizeLimit`` of the aggregator's local scratch volume (an emptyDir at ``/tmp``: the
    downloaded base and update, the new model, the disk accumulator, median's kept updates),
    e.g. ``200Gi``. Unset: no limit beyond the node's. Past it the kubelet evicts the pod; the
    restarted aggregator resumes from the newest committed round."""
    node_selector: dict[str, LabelValue] = Field(default_factory=dict)
    tolerations: list[K8sObject] = Field(default_factory=list, max_length=64)
    env: list[EnvVar] = Field(default_factory=list, max_length=128)


class ParallelismSpec(_Model):
    """How a client's ranks share the model while they train (``fedcore.sharding``)."""

    mode: Literal["ddp", "fsdp"] = "ddp"
    """``ddp``: every rank holds the whole model, rank 0 downloads the global and uploads the
    update (memory per rank: about three models). ``fsdp``: FSDP2 (``fully_shard``) shards
    every parameter over the client's ranks along its first dimension; each rank reads only
    its rows of the global model and uploads one update shard, so no rank ever holds the
    whole model (memory per rank: about a ``1/world_size`` share of the model, its
    gradient and optimizer state, plus one gathered layer)."""


class SiteSpec(_Model):
    """A client that runs outside the coordinator's cluster (its own cluster or machines)."""

    timeout_seconds: Annotated[int, Field(ge=60, le=30 * 24 * 3600)] = 3600
    """Seconds the coordinator waits for the site's next update, counted from the job's start
    and then from the last update of the site it saw, before dropping the site (as it drops a
    group past its restart budget). Longer than a round: a site may miss a round or two."""
    store_user: SecretRef | None = None
    """Secret (coordinator's namespace) with the keys of a long-lived store user made for this
    site from ``fedkube site policy`` (``mc admin`` or IAM): the join bundle then carries these
    keys instead of a temporary STS credential, which expires with no way to reach the site.
    Unset: the bundle carries a minted credential (as long as the operator's lifetime)."""


SITE_POD_FIELDS: Final[tuple[str, ...]] = (
    "resources",
    "node_selector",
    "tolerations",
    "env",
    "volumes",
    "volume_mounts",
)
"""Client fields that shape pods of the coordinator's cluster: meaningless for a site."""


class ClientSpec(_Model):
    name: Annotated[str, Field(min_length=1, max_length=MAX_CLIENT_NAME, pattern=DNS_LABEL)]
    """Participant name (DNS label); part of its pods' names and of its update's key."""
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    """Pods in this client's DistributedDataParallel group."""
    procs_per_replica: Annotated[int, Field(ge=1, le=64)] = 1
    """Training processes per pod: one per GPU when ``gpu`` is true."""
    gpu: bool = False
    """Request one ``nvidia.com/gpu`` per process and train with NCCL; false: CPU and gloo."""
    task_config: K8sObject = Field(default_factory=dict)
    """Overrides merged over ``task.config`` for this client (e.g. where its data lives)."""
    resources: Resources = Field(default_factory=dict)
    node_selector: dict[str, LabelValue] = Field(default_factory=dict)
    tolerations: list[K8sObject] = Field(default_factory=list, max_length=64)
    env: list[EnvVar] = Field(default_factory=list, max_length=128)
    volumes: list[K8sObject] = Field(default_factory=list, max_length=64)
    """Pod volumes, typically the client's private data (a PVC or hostPath)."""
    volume_mounts: list[K8sObject] = Field(default_factory=list, max_length=64)
    parallelism: ParallelismSpec = Field(default_factory=ParallelismSpec)
    """How the client's ranks share the model: ``{mode: fsdp}`` trains a model too large for
    one rank (see ``ParallelismSpec``)."""
    site: SiteSpec | None = None
    """Set: an external participant (a site). The coordinator launches nothing for it (no Job,
    no Service, no pods) but selects it, waits for it and drops it past ``site.timeoutSeconds``;
    its credentials, signing key and the job's public key reach it as the join bundle Secret
    ``<job>-<client>-join`` (``fedkube site bundle``). ``replicas``, ``procsPerReplica`` and
    ``gpu`` describe the site's default DDP group; pod fields (resources, env, volumes ...) do
    not apply."""

    @property
    def is_site(self) -> bool:
        return self.site is not None

    @property
    def world_size(self) -> int:
        return self.replicas * self.procs_per_replica

    @model_validator(mode="after")
    def _gpu_limit_matches_procs(self) -> ClientSpec:
        limits = self.resources.get("limits") or {}
        given = limits.get("nvidia.com/gpu") if isinstance(limits, dict) else None
        if given is not None and self.gpu and str(given) != str(self.procs_per_replica):
            raise ValueError(
                f"resources.limits['nvidia.com/gpu']={given} disagrees with "
                f"procsPerReplica={self.procs_per_replica} (one GPU per process); "
                "remove the limit (gpu: true sets it) or make them equal"
            )
        return self

    @model_validator(mode="after")
    def _no_moved_keys(self) -> ClientSpec:
        problems = _moved_keys("taskConfig", self.task_config)
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @model_validator(mode="after")
    def _site_has_no_pod_fields(self) -> ClientSpec:
        if self.site is None:
            return self
        # Empty is fine: the job file every pod reads spells out each default.
        given = [f for f in SITE_POD_FIELDS if getattr(self, f)]
        if given:
            wire = ", ".join(to_camel(f) for f in given)
            raise ValueError(
                f"{wire}: set for a site client, whose pods the coordinator does not run; "
                "remove them (the site sets its own pods' resources, env and volumes)"
            )
        return self


class RunPolicy(_Model):
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Restarts of a failed client group (or the aggregator) before it is given up."""
    active_deadline_seconds: Annotated[int | None, Field(ge=1)] = None
    """Wall-clock limit of the whole job; past it the job fails."""
    ttl_seconds_after_finished: Annotated[int | None, Field(ge=0)] = None
    """Delete the finished job (and everything it made) this long after it ends."""
    suspend: bool = False
    """Suspended jobs keep their store state but run no pods (Kueue semantics)."""
    clean_pod_policy: Literal["Running", "All", "None"] = "Running"
    """Pods deleted when the job ends: still-running ones (frees GPUs), all, or none."""


class FederatedJobSpec(_Model):
    rounds: Annotated[int, Field(ge=1, le=100_000)]
    """Federated rounds to run."""
    task: TaskSpec
    clients: Annotated[list[ClientSpec], Field(min_length=1, max_length=MAX_CLIENTS)]
    image: Annotated[str | None, Field(max_length=512)] = None
    """Runtime image of the pods (cluster runs); ignored by ``fedkube run``."""
    seed: Annotated[int, Field(ge=0, le=2**31 - 1)] = 0
    """Seeds model init, client selection and training: a rerun reproduces every round."""
    storage: StorageSpec = Field(default_factory=StorageSpec)
    strategy: StrategySpec = Field(default_factory=StrategySpec)
    aggregator: AggregatorSpec = Field(default_factory=AggregatorSpec)
    run_policy: RunPolicy = Field(default_factory=RunPolicy)
    tracking: TrackingSpec | None = None
    """Experiment tracking; unset: none."""

    @model_validator(mode="after")
    def _clients_are_consistent(self) -> FederatedJobSpec:
        # Collected, not raised one by one: a user fixing a spec sees every problem at once.
        problems: list[str] = []
        seen: dict[str, int] = {}
        for index, client in enumerate(self.clients):
            if client.name in RESERVED_CLIENT_NAMES:
                problems.append(
                    f"clients[{index}].name: {client.name!r} is reserved "
                    f"({RESERVED_CLIENT_NAMES[client.name]}); rename the client"
                )
            elif client.name in seen:
                problems.append(
                    f"clients[{index}].name: duplicate client name {client.name!r} "
                    f"(also clients[{seen[client.name]}].name); give each client a unique name"
                )
            seen.setdefault(client.name, index)
        sites = [c.name for c in self.clients if c.is_site]
        if sites and self.storage.credentials == "shared":
            problems.append(
                f"storage.credentials: 'shared' with site client(s) {', '.join(sites)}: a site "
                "would receive the job's own store credential; use credentials: scoped"
            )
        if self.aggregator.accumulator == "disk" and self.strategy.name not in DISK_ACCUMULATOR:
            problems.append(
                f"aggregator.accumulator: 'disk' does not apply to {self.strategy.name}, which "
                "keeps state of the model's size of its own (control variates, the round's "
                f"updates); use one of {', '.join(DISK_ACCUMULATOR)}, or accumulator: memory"
            )
        for index, client in enumerate(self.clients):
            if client.parallelism.mode != "fsdp":
                continue
            if self.strategy.name in FSDP_REFUSES_STRATEGIES:
                problems.append(
                    f"clients[{index}].parallelism.mode: 'fsdp' cannot train for strategy "
                    f"{self.strategy.name} (its client state assumes whole tensors on every "
                    "rank); use mode ddp for this client or another strategy"
                )
            if self.strategy.update_dtype == "int8":
                problems.append(
                    f"clients[{index}].parallelism.mode: 'fsdp' cannot upload int8 updates "
                    "(strategy.updateDtype); use updateDtype float32, bfloat16 or float16, or "
                    "mode ddp"
                )
        wanted = self.strategy.min_clients
        if wanted is not None and wanted > len(self.clients):
            problems.append(
                f"strategy.minClients: {wanted} is more than the {len(self.clients)} clients "
                "listed in clients; lower minClients or add clients"
            )
        if self.strategy.name == "krum":
            f = self.strategy.byzantine_clients or 0
            quorum = self.strategy.min_clients or len(self.clients)
            where = "strategy.minClients" if self.strategy.min_clients else "clients"
            if quorum < 2 * f + 3:
                problems.append(
                    f"{where}: krum with byzantineClients={f} needs a quorum of at least "
                    f"{2 * f + 3} updates (N > 2f + 2), but a round may close with {quorum}; "
                    "raise minClients (add clients) or lower byzantineClients"
                )
            elif (self.strategy.krum_select or 1) > quorum - f:
                problems.append(
                    f"strategy.krumSelect: {self.strategy.krum_select} is more than the quorum "
                    f"({quorum}) minus byzantineClients ({f}); lower krumSelect"
                )
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def min_clients(self) -> int:
        """Quorum of a round: ``strategy.minClients``, or every client when unset."""
        return self.strategy.min_clients or len(self.clients)

    def clients_per_round(self, available: int) -> int:
        """How many of ``available`` clients a round selects."""
        return min(
            available, max(self.min_clients, math.ceil(self.strategy.fraction_fit * available))
        )

    def client(self, name: str) -> ClientSpec:
        for client in self.clients:
            if client.name == name:
                return client
        known = ", ".join(c.name for c in self.clients)
        raise SpecError([("spec.clients", f"no client named {name!r}; known clients: {known}")])

    def task_config_for(self, name: str) -> dict[str, Any]:
        """The task config one client sees: ``task.config`` with its ``taskConfig`` on top."""
        return {**self.task.config, **self.client(name).task_config}


class ObjectMeta(BaseModel):
    """The part of Kubernetes metadata fedkube reads; everything else passes through."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=JOB_NAME)] = "job"
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None


# ---- status (written by the operator; read by kubectl and tests) -----------------------------


class Condition(_Model):
    """Shaped like metav1.Condition."""

    type: Annotated[str, Field(min_length=1, max_length=316)]
    status: Literal["True", "False", "Unknown"]
    reason: Annotated[str, Field(min_length=1, max_length=1024)]
    message: Annotated[str, Field(max_length=MAX_MESSAGE)] = ""
    last_transition_time: datetime | None = None
    observed_generation: int | None = None


class ClientStatus(_Model):
    phase: Literal["Pending", "Running", "Restarting", "Succeeded", "Failed", "Dropped"] = "Pending"
    last_round: int | None = None
    """Newest round this client's update was folded into."""
    num_samples: int | None = None
    restarts: int = 0
    message: Annotated[str, Field(max_length=MAX_MESSAGE)] = ""
    last_seen: datetime | None = None
    """Sites only: when the coordinator first saw the site's newest folded update."""


class RoundSummary(_Model):
    round: int
    participants: Annotated[
        list[Annotated[str, Field(max_length=MAX_CLIENT_NAME)]], Field(max_length=MAX_CLIENTS)
    ] = Field(default_factory=list)
    metrics: dict[str, float] = Field(default_factory=dict)
    duration_seconds: float | None = None
    rejected: int = 0
    epsilon: float | None = None
    """``dpfedavg`` only: client-level epsilon spent up to this round (at ``strategy.dp.delta``),
    copied from the signed round record: the Epsilon column of ``kubectl get fj``."""


class ModelRef(_Model):
    uri: Annotated[str, Field(max_length=2048)]
    sha256: Annotated[str, Field(max_length=64)]


class FederatedJobStatus(_Model):
    phase: Literal["Pending", "Running", "Succeeded", "Failed", "Suspended"] = "Pending"
    observed_generation: int | None = None
    current_round: int = 0
    total_rounds: int | None = None
    conditions: Annotated[list[Condition], Field(max_length=32)] = Field(default_factory=list)
    clients: dict[str, ClientStatus] = Field(default_factory=dict)
    last_round: RoundSummary | None = None
    history: Annotated[list[RoundSummary], Field(max_length=MAX_HISTORY)] = Field(
        default_factory=list
    )
    model: ModelRef | None = None
    start_time: datetime | None = None
    completion_time: datetime | None = None
    message: Annotated[str, Field(max_length=MAX_MESSAGE)] = ""
    progress: Annotated[str, Field(max_length=32)] = ""
    """Rounds committed out of the total, e.g. ``3/10``: the Round column of ``kubectl get fj``
    (printer columns cannot concatenate two fields)."""
    active_clients: int = 0
    """Clients neither dropped nor failed: the Clients column of ``kubectl get fj``."""


class FederatedJob(BaseModel):
    """A whole FederatedJob object, as in a manifest or from the API server."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    api_version: Literal["fedkube.io/v1alpha1"] = "fedkube.io/v1alpha1"
    kind: Literal["FederatedJob"] = "FederatedJob"
    metadata: ObjectMeta = Field(default_factory=ObjectMeta)
    spec: FederatedJobSpec
    status: FederatedJobStatus | None = None

    @property
    def name(self) -> str:
        return self.metadata.name

    @model_validator(mode="after")
    def _child_names_fit(self) -> FederatedJob:
        # The operator names objects after the job: a name that breaks them must fail here
        # (and in the CRD's matching CEL rule), not later as a half-created job.
        name = self.metadata.name
        if len(name) > MAX_JOB_NAME:
            raise ValueError(
                f"metadata.name: {name!r} has {len(name)} characters; the aggregator Job "
                f"'<name>-aggregator' must fit in {MAX_HOST_NAME}, so use at most {MAX_JOB_NAME}"
            )
        for index, client in enumerate(self.spec.clients):
            host = f"{name}-{client.name}-{client.replicas - 1}"
            if len(host) > MAX_HOST_NAME:
                raise ValueError(
                    f"metadata.name: with spec.clients[{index}].name {client.name!r} the pod host "
                    f"name {host!r} has {len(host)} characters (limit {MAX_HOST_NAME}); "
                    "shorten the job name or the client name"
                )
        return self

    def to_object(self) -> dict[str, Any]:
        """JSON-ready dict in wire form (camelCase, no unset status)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True, exclude={"status"})


# ---- checks beyond one field

RESERVED_ENV = frozenset(
    {
        "PET_NNODES",
        "PET_NPROC_PER_NODE",
        "PET_NODE_RANK",
        "PET_MASTER_ADDR",
        "PET_MASTER_PORT",
        "MASTER_ADDR",
        "MASTER_PORT",
        "WORLD_SIZE",
        "RANK",
        "LOCAL_RANK",
        "NODE_RANK",
        "GROUP_RANK",
        "LOCAL_WORLD_SIZE",
        "FEDKUBE_SIGNING_KEY_FILE",
        "FEDKUBE_SIGNING_KEYS_DIR",
        "FEDKUBE_COMMIT_KEY_FILE",
        "FEDKUBE_COMMIT_PUBLIC_KEY_FILE",
        "FEDKUBE_STORE_DIR",
        "FEDKUBE_STORE_CREDENTIALS_FILE",
    }
)
"""Variables fedkube sets in pods (or torch's launcher derives): a user value would
contradict them and, for the rendezvous ones, hang a DDP group silently."""
RESERVED_ENV_PREFIXES = ("PET_", "TORCHELASTIC_")
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
"""Set from ``spec.storage.secretRef`` when it is given (and then reserved)."""


def _reserved(name: str, spec: FederatedJobSpec) -> bool:
    if name in RESERVED_ENV or name.startswith(RESERVED_ENV_PREFIXES):
        return True
    return spec.storage.secret_ref is not None and name in CREDENTIAL_ENV


def env_problems(spec: FederatedJobSpec) -> list[tuple[str, str]]:
    """Problems (field, message) with user env that would override the operator's."""
    where: list[tuple[str, list[dict[str, Any]]]] = [("spec.aggregator.env", spec.aggregator.env)]
    where += [(f"spec.clients[{i}].env", c.env) for i, c in enumerate(spec.clients)]
    problems: list[tuple[str, str]] = []
    for field, env in where:
        for index, item in enumerate(env):
            name = item.get("name")
            if isinstance(name, str) and _reserved(name, spec):
                source = "spec.storage.secretRef" if name in CREDENTIAL_ENV else "fedkube"
                problems.append(
                    (
                        f"{field}[{index}].name",
                        f"{name} is set by {source} (torchrun rendezvous, signing keys and store "
                        "credentials are fedkube's); remove it from env",
                    )
                )
    return problems


# ---- loading and error reporting ---------------------------------------------------------------

_PATTERN_HINTS: dict[str, str] = {
    DNS_LABEL: "a DNS label: lowercase letters, digits and '-', alphanumeric at both ends "
    "(e.g. 'hospital-a')",
    JOB_NAME: "a DNS-1035 label: lowercase letters, digits and '-', starting with a letter and "
    "ending alphanumeric (e.g. 'digits-2'); it prefixes Service names",
    ENTRYPOINT: "'module:attribute', importable in the runtime (e.g. 'fedcore.tasks.digits:task')",
    ENDPOINT: "an http(s) URL (e.g. 'http://minio.minio:9000')",
    BUCKET: "an S3 bucket name: 3-63 lowercase letters, digits, '.' or '-'",
    PREFIX: "a relative key path without a leading '/', empty ('//'), '.' or '..' segments "
    "(e.g. 'teams/a/')",
    QUANTITY: "a Kubernetes quantity such as '200Gi' or '1.5T'",
}


def _problems(error: ValidationError, root: str) -> list[tuple[str, str]]:
    return spec_messages.problems(error, root, _PATTERN_HINTS)


def parse_job(obj: dict[str, Any], *, source: str | None = None) -> FederatedJob:
    """Validate a FederatedJob object (manifest or API object); raise ``SpecError``.

    As strict as the API server's schema: no type coercion (``rounds: "10"`` is an error) and
    camelCase field names only; nulls and whole floats are read as the API server reads them
    (``fedcore.spec_wire``). ``status`` is not read: the API server ignores it in a
    manifest, and the operator reads it on its own (``FederatedJobStatus``).
    """
    if not isinstance(obj, dict):
        raise SpecError(
            [("<document>", "expected a mapping (a FederatedJob object)")], source=source
        )
    obj = spec_wire.as_read_by_the_api_server(
        {k: v for k, v in obj.items() if k != "status"}, FederatedJob
    )
    try:
        job = FederatedJob.model_validate(obj, strict=True, by_alias=True, by_name=False)
    except ValidationError as e:
        raise SpecError(_problems(e, root=""), source=source) from e
    if problems := env_problems(job.spec):
        raise SpecError(problems, source=source)
    return job


def parse_spec(spec: dict[str, Any], *, source: str | None = None) -> FederatedJobSpec:
    """Validate only a spec (what the operator's handlers receive), as strictly as
    ``parse_job``."""
    spec = spec_wire.as_read_by_the_api_server(spec, FederatedJobSpec)
    try:
        parsed = FederatedJobSpec.model_validate(spec, strict=True, by_alias=True, by_name=False)
    except ValidationError as e:
        raise SpecError(_problems(e, root="spec"), source=source) from e
    if problems := env_problems(parsed):
        raise SpecError(problems, source=source)
    return parsed


def load_job(path: str | Path) -> FederatedJob:
    """Read a FederatedJob from a YAML or JSON file: every document is checked, the first
    FederatedJob is returned (see ``fedcore.jobfile``)."""
    from fedcore.jobfile import load_job_file

    return load_job_file(path)


def job_prefix(job: FederatedJob) -> str:
    """Key prefix of the job's objects in the store, always ending in '/'."""
    given = job.spec.storage.prefix.strip("/")
    if given:
        return given + "/"
    namespace = job.metadata.namespace or "local"
    suffix = f"-{job.metadata.uid[:8]}" if job.metadata.uid else ""
    return f"fedkube/{namespace}/{job.metadata.name}{suffix}/"
