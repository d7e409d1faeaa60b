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
What the operator does inside a namespace it watches (operator/fedop/kube.py lists the calls).
Secrets: it creates each client's signing-key Secret and reads the S3 credentials Secret a
FederatedJob names. Pods: it deletes them per spec.runPolicy.cleanPodPolicy.
*/}}
{{- define "fedkube.namespacedRules" -}}
- apiGroups: [fedkube.io]
  resources: [federatedjobs]
  verbs: [get, list, watch, patch, update]
- apiGroups: [fedkube.io]
  resources: [federatedjobs/status]
  verbs: [get, patch, update]
- apiGroups: [fedkube.io]
  # Owner references with blockOwnerDeletion need this where OwnerReferencesPermissionEnforcement is on.
  resources: [federatedjobs/finalizers]
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  verbs: [get, list, watch, create, delete, patch]
- apiGroups: [""]
  resources: [services, configmaps, secrets]
  verbs: [get, list, watch, create, delete, patch]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch, delete]
- apiGroups: [""]
  resources: [events]
  verbs: [create, patch]
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* kopf discovers and watches its resources' definitions (read-only, cluster-scoped). */}}
{{- define "fedkube.clusterReadRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [get, list, watch]
{{- end -}}
