{{/*
The chart name, overridable with nameOverride.
Kubernetes names and label values are at most 63 characters (DNS-1123 label), so every name is
truncated to 63 and a trailing "-" left by the cut is removed.
*/}}
{{- define "mailroom.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name: <release>-<chart>, or just the release name when it already contains the chart name.
Truncated to 63 characters (see above); suffixed names built from it ("-webhook", "-metrics") are
truncated again where they are used.
*/}}
{{- define "mailroom.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>", kept within 63 characters. Call with (list $ "suffix"). */}}
{{- define "mailroom.suffixed" -}}
{{- $root := index . 0 }}
{{- $suffix := index . 1 }}
{{- printf "%s-%s" (include "mailroom.fullname" $root | trunc (int (sub 62 (len $suffix))) | trimSuffix "-") $suffix }}
{{- end }}

{{/* Chart label: name-version, "+" is not allowed in label values. */}}
{{- define "mailroom.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every object. */}}
{{- define "mailroom.labels" -}}
helm.sh/chart: {{ include "mailroom.chart" . }}
{{ include "mailroom.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mailroom
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that select the operator pods; never change them (Deployment selectors are immutable). */}}
{{- define "mailroom.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mailroom.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* The operator's ServiceAccount name. */}}
{{- define "mailroom.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "mailroom.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
An image reference from {registry, repository, tag, digest}; global.imageRegistry replaces the
registry, and the digest wins over the tag. Call with (list $ .Values.x.image).
*/}}
{{- define "mailroom.image" -}}
{{- $root := index . 0 }}
{{- $image := index . 1 }}
{{- $registry := dig "imageRegistry" "" ($root.Values.global | default dict) | default $image.registry }}
{{- $name := $image.repository }}
{{- if $registry }}
{{- $name = printf "%s/%s" (trimSuffix "/" $registry) $image.repository }}
{{- end }}
{{- if $image.digest }}
{{- printf "%s@%s" $name $image.digest }}
{{- else }}
{{- printf "%s:%s" $name (default $root.Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{- define "mailroom.webhookServiceName" -}}
{{- include "mailroom.suffixed" (list . "webhook") }}
{{- end }}

{{- define "mailroom.webhookConfigName" -}}
{{- include "mailroom.suffixed" (list . "sidecar-injector") }}
{{- end }}

{{- define "mailroom.webhookSecretName" -}}
{{- default (include "mailroom.suffixed" (list . "webhook-tls")) .Values.webhook.tlsSecretName }}
{{- end }}

{{- define "mailroom.leaseName" -}}
{{- default (include "mailroom.fullname" .) .Values.operator.leaderElection.leaseName }}
{{- end }}

{{/*
Settings that contradict each other fail the render with a sentence saying what to change.
Included by the Deployment, so every render runs it.
*/}}
{{- define "mailroom.validate" -}}
{{- if and (gt (int .Values.operator.replicas) 1) (not .Values.operator.leaderElection.enabled) }}
{{- fail "operator.replicas > 1 needs operator.leaderElection.enabled=true: without a Lease every replica would reconcile at once" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (not .Values.operator.metricsService.enabled) }}
{{- fail "serviceMonitor.enabled=true needs operator.metricsService.enabled=true: the ServiceMonitor scrapes that Service" }}
{{- end }}
{{- $min := .Values.operator.podDisruptionBudget.minAvailable }}
{{- if and .Values.operator.podDisruptionBudget.enabled (not (kindIs "string" $min)) (ge (int $min) (int .Values.operator.replicas)) }}
{{- fail (printf "operator.replicas is %d and the PodDisruptionBudget keeps %d available, so no node running the operator could ever be drained: set operator.replicas to 2 or more (recommended: every replica serves the webhook), or lower operator.podDisruptionBudget.minAvailable, or set operator.podDisruptionBudget.enabled=false" (int .Values.operator.replicas) (int $min)) }}
{{- end }}
{{- end }}
