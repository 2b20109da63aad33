{{/* Chart name, truncated to the 63 characters of a DNS label. */}}
{{- define "centrifugo-py.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: <release>-<chart> unless the release name already contains it. */}}
{{- define "centrifugo-py.fullname" -}}
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

{{- define "centrifugo-py.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels shared by every resource of the release. */}}
{{- define "centrifugo-py.labels" -}}
app.kubernetes.io/name: {{ include "centrifugo-py.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{ include "centrifugo-py.metaLabels" . }}
{{- end }}

{{/* The labels that are not part of any selector. */}}
{{- define "centrifugo-py.metaLabels" -}}
helm.sh/chart: {{ include "centrifugo-py.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Selector of the server pods (the component keeps the bundled Redis pods out). */}}
{{- define "centrifugo-py.selectorLabels" -}}
app.kubernetes.io/name: {{ include "centrifugo-py.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "centrifugo-py.redisSelectorLabels" -}}
app.kubernetes.io/name: {{ include "centrifugo-py.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: redis
{{- end }}

{{- define "centrifugo-py.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "centrifugo-py.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "centrifugo-py.secretName" -}}
{{- default (include "centrifugo-py.fullname" .) .Values.secrets.existingSecret }}
{{- end }}

{{- define "centrifugo-py.redisName" -}}
{{- printf "%s-redis" (include "centrifugo-py.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The engine in force: the bundled Redis implies redis. */}}
{{- define "centrifugo-py.engineType" -}}
{{- if .Values.redis.enabled }}redis{{ else }}{{ .Values.engine.type }}{{ end }}
{{- end }}

{{- define "centrifugo-py.metricsEnabled" -}}
{{- if or .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{/* Name of the container/Service port serving API, health and metrics. */}}
{{- define "centrifugo-py.internalPortName" -}}
{{- if gt (int .Values.internalPort) 0 }}internal{{ else }}http{{ end }}
{{- end }}

{{/* Settings that fail early instead of deploying a broken topology. */}}
{{- define "centrifugo-py.validate" -}}
{{- $engine := include "centrifugo-py.engineType" . }}
{{- if not (has $engine (list "memory" "redis")) }}
{{- fail (printf "engine.type must be memory or redis, got %q" $engine) }}
{{- end }}
{{- if eq $engine "memory" }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled (gt (int .Values.webConcurrency) 1) }}
{{- fail "more than one pod or worker needs the redis engine: set redis.enabled=true or engine.type=redis with engine.redis.address" }}
{{- end }}
{{- end }}
{{- if and (eq $engine "redis") (not .Values.redis.enabled) (empty .Values.engine.redis.address) }}
{{- fail "engine.type=redis needs engine.redis.address (external Redis) or redis.enabled=true (bundled Redis)" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (ne (toString .Values.podDisruptionBudget.minAvailable) "") (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) (ne (toString .Values.podDisruptionBudget.maxUnavailable) "") }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- if lt (int .Values.webConcurrency) 1 }}
{{- fail "webConcurrency must be at least 1" }}
{{- end }}
{{- end }}

{{/* config.json: the user's config with the chart-managed keys laid over it. */}}
{{- define "centrifugo-py.config" -}}
{{- $engine := include "centrifugo-py.engineType" . }}
{{- $server := dict "port" (int .Values.containerPort) }}
{{- if gt (int .Values.internalPort) 0 }}
{{- $_ := set $server "internal_port" (int .Values.internalPort) }}
{{- end }}
{{- $managed := dict "http_server" $server "health" (dict "enabled" true) }}
{{- if include "centrifugo-py.metricsEnabled" . }}
{{- $_ := set $managed "prometheus" (dict "enabled" true) }}
{{- end }}
{{- $engineCfg := dict "type" $engine }}
{{- if eq $engine "redis" }}
{{- $address := .Values.engine.redis.address }}
{{- if kindIs "string" $address }}
{{- $address = list $address }}
{{- end }}
{{- if .Values.redis.enabled }}
{{- $address = list (printf "redis://%s:6379" (include "centrifugo-py.redisName" .)) }}
{{- end }}
{{- $_ := set $engineCfg "redis" (dict "address" $address "prefix" .Values.engine.redis.prefix) }}
{{- end }}
{{- $_ := set $managed "engine" $engineCfg }}
{{- mustMergeOverwrite (deepCopy (.Values.config | default dict)) $managed | toPrettyJson }}
{{- end }}
