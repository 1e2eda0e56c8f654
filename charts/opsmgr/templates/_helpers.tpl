{{/* The base name of every object: the release name, unless it lacks the chart name (then `<release>-opsmgr`). */}}
{{- define "opsmgr.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "opsmgr.operatorName" -}}
{{- printf "%s-operator" (include "opsmgr.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "opsmgr.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "opsmgr.operatorName" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name must name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Labels every object carries; the selector labels are the immutable subset a Deployment selects by. */}}
{{- define "opsmgr.selectorLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "opsmgr.commonLabels" -}}
app.kubernetes.io/name: {{ default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: opsmgr
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{- end -}}

{{- define "opsmgr.labels" -}}
{{ include "opsmgr.commonLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* repository:tag or repository@digest; the tag defaults to the chart's appVersion. */}}
{{- define "opsmgr.imageRef" -}}
{{- $image := index . 0 -}}
{{- $chart := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
Argo CD sync waves: CRDs first, then the operator's identity and rights, then the operator itself; user objects
(wave 0 and later, see argocd/README.md) follow once the operator is Healthy.
*/}}
{{- define "opsmgr.syncWave.crds" -}}"-3"{{- end -}}
{{- define "opsmgr.syncWave.rbac" -}}"-2"{{- end -}}
{{- define "opsmgr.syncWave.operator" -}}"-1"{{- end -}}
