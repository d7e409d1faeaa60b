{{/* Names and labels shared by every object of the chart. */}}

{{- define "fedkube.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "fedkube.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "fedkube.selectorLabels" -}}
app.kubernetes.io/name: {{ include "fedkube.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "fedkube.labels" -}}
{{ include "fedkube.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: fedkube
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "fedkube.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "fedkube.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "fedkube.image" -}}
{{- printf "%s:%s" .repository (default .appVersion .tag) -}}
{{- end -}}

{{/*
What the operator calls inside a namespace it watches: exactly the table in the docstring of
operator/fedop/kube.py (tests/unit/test_helm_chart.py compares the two). Services, Secrets and
ConfigMaps are never deleted by the operator: the garbage collector removes them through their
owner references. Secrets: each client's signing key, and the S3 credentials a job names.
*/}}
{{- define "fedkube.namespacedRules" -}}
- apiGroups: [fedkube.io]
  # watch: kopf; delete: ttlSecondsAfterFinished.
  resources: [federatedjobs]
  verbs: [get, list, watch, delete]
- apiGroups: [fedkube.io]
  resources: [federatedjobs/status]
  verbs: [get, patch]
- apiGroups: [fedkube.io]
  # Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement is on.
  resources: [federatedjobs/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, create]
- apiGroups: [""]
  # patch: rotating the store credentials minted per role (Secrets the operator owns).
  resources: [secrets]
  verbs: [get, list, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, create]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/*
What the site operator (mode: site) calls inside a namespace it watches: exactly the table in
the docstring of operator/fedop/site_handlers.py (tests/unit/test_helm_chart.py compares them).
No FederatedJob, and no Secret is ever read but a FederatedSite's bundle and the site's own.
*/}}
{{- define "fedkube.siteRules" -}}
- apiGroups: [fedkube.io]
  resources: [federatedsites]
  verbs: [get, list, watch]
- apiGroups: [fedkube.io]
  resources: [federatedsites/status]
  verbs: [get, patch]
- apiGroups: [fedkube.io]
  resources: [federatedsites/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services]
  verbs: [get, list, create]
- apiGroups: [""]
  # get: the bundle; patch: objects derived from a replaced bundle.
  resources: [secrets]
  verbs: [get, list, create, patch]
- apiGroups: [""]
  resources: [configmaps]
  verbs: [get, list, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, create]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{- define "fedkube.modeRules" -}}
{{- if eq .Values.mode "site" }}
{{- include "fedkube.siteRules" . }}
{{- else }}
{{- include "fedkube.namespacedRules" . }}
{{- end }}
{{- end -}}

{{/*
Read-only and cluster-scoped, in both modes: kopf discovers its resources through their
definitions, and follows namespaces even when given explicit --namespace names (it treats
them as patterns).
*/}}
{{- define "fedkube.clusterReadRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
- apiGroups: [""]
  resources: [namespaces]
  verbs: [get, list, watch]
{{- end -}}
