"""The FederatedSite resource as typed models: the source of truth of its CRD.

A site (``spec.clients[].site`` of a coordinator's FederatedJob) that has its own Kubernetes
cluster runs its DDP group there with one FederatedSite: it names the Secret holding the join
bundle the coordinator exported (``fedkube site bundle``) and describes the site's own pods
(group size, GPUs, resources, scheduling, env, volumes with the site's data). The site's
operator (the fedkube chart with ``mode: site``) runs the group as an Indexed Job, restarts it
as the coordinator would, and reports the rounds it reads from the bucket in ``status``.

Nothing here is read by the coordinator: it sees the site only through its updates.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic.alias_generators import to_camel

from fedcore import spec as fs
from fedcore import spec_messages, spec_wire
from fedcore.errors import SpecError

KIND: Final = "FederatedSite"
PLURAL: Final = "federatedsites"
BUNDLE_KEY: Final = "bundle.json"
"""Default data key of the bundle Secret (``kubectl create secret generic NAME
--from-file=bundle.json``)."""
SITE_RESERVED_ENV: Final = fs.RESERVED_ENV | frozenset(fs.CREDENTIAL_ENV)
"""The variables a site's pods get from the operator: the coordinator's reserved ones, and the
store credentials (from the bundle)."""


_Model = fs._Model
"""The spec models' shared configuration (camelCase on the wire, unknown fields refused)."""


class BundleSecretRef(_Model):
    name: Annotated[str, Field(min_length=1, max_length=253, pattern=fs.DNS_LABEL)]
    """Secret in the FederatedSite's namespace holding the join bundle file."""
    key: Annotated[str, Field(min_length=1, max_length=253)] = BUNDLE_KEY
    """Data key of the Secret holding the bundle."""


class SitePodTemplate(_Model):
    """What the site decides about its pods (the coordinator never sees it)."""

    resources: fs.Resources = Field(default_factory=dict)
    node_selector: dict[str, fs.LabelValue] = Field(default_factory=dict)
    tolerations: list[fs.K8sObject] = Field(default_factory=list, max_length=64)
    env: list[fs.EnvVar] = Field(default_factory=list, max_length=128)
    volumes: list[fs.K8sObject] = Field(default_factory=list, max_length=64)
    """Pod volumes, typically the site's private data (a PVC or hostPath)."""
    volume_mounts: list[fs.K8sObject] = Field(default_factory=list, max_length=64)


class FederatedSiteSpec(_Model):
    bundle_secret_ref: BundleSecretRef
    """The join bundle (``fedkube site bundle JOB CLIENT -o bundle.json``, then
    ``kubectl create secret generic NAME --from-file=bundle.json``). Replace the Secret's
    content to hand the group fresh store credentials: the pods pick them up without a restart."""
    replicas: Annotated[int, Field(ge=1, le=1024)] = 1
    """Pods in the site's DistributedDataParallel group."""
    procs_per_replica: Annotated[int, Field(ge=1, le=64)] = 1
    """Training processes per pod: one per GPU when ``gpu`` is true."""
    gpu: bool = False
    """Request one ``nvidia.com/gpu`` per process and train with NCCL; false: CPU and gloo."""
    image: Annotated[str | None, Field(max_length=512)] = None
    """Runtime image of the pods; default: the coordinator's ``spec.image``, else the
    operator's runtime image."""
    template: SitePodTemplate = Field(default_factory=SitePodTemplate)
    backoff_limit: Annotated[int, Field(ge=0, le=100)] = 3
    """Restarts of the whole group after a pod failed, before the site gives up (Failed)."""

    @model_validator(mode="after")
    def _gpu_limit_matches_procs(self) -> FederatedSiteSpec:
        limits = self.template.resources.get("limits") or {}
        given = limits.get("nvidia.com/gpu") if isinstance(limits, dict) else None
        if given is not None and self.gpu and str(given) != str(self.procs_per_replica):
            raise ValueError(
                f"template.resources.limits['nvidia.com/gpu']={given} disagrees with "
                f"procsPerReplica={self.procs_per_replica} (one GPU per process); "
                "remove the limit (gpu: true sets it) or make them equal"
            )
        return self


SitePhase = Literal["Pending", "Running", "Restarting", "Succeeded", "Failed"]


class FederatedSiteStatus(_Model):
    phase: SitePhase = "Pending"
    observed_generation: int | None = None
    job: Annotated[str, Field(max_length=253)] = ""
    """The coordinator's FederatedJob this site takes part in (from the bundle)."""
    client: Annotated[str, Field(max_length=fs.MAX_CLIENT_NAME)] = ""
    """This site's client name in that job (from the bundle)."""
    current_round: int | None = None
    """Newest round committed by the coordinator's aggregator, read from the bucket and
    verified with the job's commit public key (from the bundle)."""
    total_rounds: int | None = None
    last_round: int | None = None
    """Newest committed round this site's update was folded into."""
    restarts: int = 0
    """Group restarts so far (out of ``spec.backoffLimit``)."""
    last_update_time: datetime | None = None
    """When this operator last saw a new committed round."""
    start_time: datetime | None = None
    completion_time: datetime | None = None
    message: Annotated[str, Field(max_length=fs.MAX_MESSAGE)] = ""
    conditions: Annotated[list[fs.Condition], Field(max_length=32)] = Field(default_factory=list)


class SiteMeta(BaseModel):
    """The part of Kubernetes metadata the site operator reads."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=fs.JOB_NAME)] = "site"
    namespace: str | None = None
    uid: str | None = None
    generation: int | None = None


class FederatedSite(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="forbid", frozen=True
    )

    api_version: Literal["fedkube.io/v1alpha1"] = "fedkube.io/v1alpha1"
    kind: Literal["FederatedSite"] = "FederatedSite"
    metadata: SiteMeta = Field(default_factory=SiteMeta)
    spec: FederatedSiteSpec
    status: FederatedSiteStatus | None = None


def env_problems(spec: FederatedSiteSpec) -> list[tuple[str, str]]:
    """User env that would override what the operator sets in the site's pods."""
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(spec.template.env):
        name = item.get("name")
        if isinstance(name, str) and (
            name in SITE_RESERVED_ENV or name.startswith(fs.RESERVED_ENV_PREFIXES)
        ):
            problems.append(
                (
                    f"spec.template.env[{index}].name",
                    f"{name} is set by fedkube (torchrun rendezvous, signing keys and the store "
                    "credentials come from the join bundle); remove it from env",
                )
            )
    return problems


_HINTS = {
    fs.DNS_LABEL: "a DNS label: lowercase letters, digits and '-' (e.g. 'hospital-b-join')",
    fs.JOB_NAME: "a DNS-1035 label: lowercase letters, digits and '-', starting with a letter",
}


def parse_site(obj: Any, *, source: str | None = None) -> FederatedSite:
    """Validate a FederatedSite object (manifest or API object) as strictly as the API server;
    ``SpecError`` naming each field and the fix."""
    if not isinstance(obj, dict):
        raise SpecError(
            [("<document>", "expected a mapping (a FederatedSite object)")], source=source
        )
    obj = spec_wire.as_read_by_the_api_server(
        {k: v for k, v in obj.items() if k != "status"}, FederatedSite
    )
    try:
        site = FederatedSite.model_validate(obj, strict=True, by_alias=True, by_name=False)
    except ValidationError as e:
        raise SpecError(spec_messages.problems(e, "", _HINTS), source=source) from e
    if problems := env_problems(site.spec):
        raise SpecError(problems, source=source)
    return site


def parse_site_status(raw: Any) -> FederatedSiteStatus:
    """The status as stored, keeping the fields this version knows; empty when unreadable."""
    if not isinstance(raw, dict) or not raw:
        return FederatedSiteStatus()
    known = {f.alias or name for name, f in FederatedSiteStatus.model_fields.items()}
    try:
        return FederatedSiteStatus.model_validate({k: v for k, v in raw.items() if k in known})
    except ValidationError:
        return FederatedSiteStatus()
