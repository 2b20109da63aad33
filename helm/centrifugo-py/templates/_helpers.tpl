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

{{/* "<fullname>-<suffix>" within the 63 characters of a DNS label. */}}
{{- define "centrifugo-py.suffixed" -}}
{{- $base := include "centrifugo-py.fullname" .root | trunc (int (sub 62 (len .suffix))) | trimSuffix "-" }}
{{- printf "%s-%s" $base .suffix }}
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

{{- define "centrifugo-py.redisName" -}}
{{- include "centrifugo-py.suffixed" (dict "root" . "suffix" "redis") }}
{{- end }}

{{/* "<registry>/<repository>:<tag>": global.imageRegistry wins over the image's registry, as in
     the official chart; no registry leaves the repository as given. Call with
     (dict "image" <image values> "root" $ "tag" <default tag>). */}}
{{- define "centrifugo-py.image" -}}
{{- $registry := .image.registry | default "" }}
{{- with .root.Values.global }}{{ with .imageRegistry }}{{ $registry = . }}{{ end }}{{ end }}
{{- $ref := printf "%s:%s" .image.repository (toString (.image.tag | default .tag)) }}
{{- if $registry }}{{ printf "%s/%s" (trimSuffix "/" $registry) $ref }}{{ else }}{{ $ref }}{{ end }}
{{- end }}

{{/* imagePullSecrets of a pod: global.imagePullSecrets wins over imagePullSecrets; each item a
     name or a {name: ...}. */}}
{{- define "centrifugo-py.imagePullSecrets" -}}
{{- $secrets := .Values.imagePullSecrets }}
{{- with .Values.global }}{{ with .imagePullSecrets }}{{ $secrets = . }}{{ end }}{{ end }}
{{- if $secrets }}
imagePullSecrets:
{{- range $secrets }}
  - name: {{ kindIs "string" . | ternary . (get (kindIs "map" . | ternary . dict) "name") }}
{{- end }}
{{- end }}
{{- end }}

{{/* config.engine as the server will run it: the user's, with the bundled Redis's type and
     address laid over it when redis.enabled. Rendered as JSON (fromJson to use it). */}}
{{- define "centrifugo-py.engine" -}}
{{- $engine := deepCopy (dig "engine" dict (.Values.config | default dict)) }}
{{- if not (hasKey $engine "type") }}{{ $_ := set $engine "type" "memory" }}{{ end }}
{{- if .Values.redis.enabled }}
{{- $redis := get $engine "redis" | default dict }}
{{- $_ := set $redis "address" (list (printf "redis://%s:6379" (include "centrifugo-py.redisName" .))) }}
{{- $_ := set $engine "redis" $redis }}
{{- $_ := set $engine "type" "redis" }}
{{- end }}
{{- toJson $engine }}
{{- end }}

{{/* Whether the topology shares state between pods and workers: the Redis engine, or a Redis
     broker plus a Redis presence manager next to the memory engine (Centrifugo v6). */}}
{{- define "centrifugo-py.shared" -}}
{{- $engine := include "centrifugo-py.engine" . | fromJson }}
{{- $cfg := .Values.config | default dict }}
{{- $broker := dig "broker" dict $cfg }}
{{- $presence := dig "presence_manager" dict $cfg }}
{{- if eq (toString $engine.type) "redis" }}true
{{- else if and (dig "enabled" false $broker) (eq (toString (dig "type" "" $broker)) "redis") (dig "enabled" false $presence) (eq (toString (dig "type" "" $presence)) "redis") }}true
{{- end }}
{{- end }}

{{/* Whether the env could supply engine.redis.address (a Secret or ConfigMap the chart cannot
     read, or an explicit variable). */}}
{{- define "centrifugo-py.addressFromEnv" -}}
{{- if or .Values.existingSecret .Values.envFrom }}true
{{- else }}
{{- $names := list }}
{{- range .Values.envSecret }}{{ $names = append $names .name }}{{ end }}
{{- if kindIs "map" .Values.env }}{{ $names = concat $names (keys .Values.env) }}
{{- else }}{{ range .Values.env }}{{ $names = append $names .name }}{{ end }}{{ end }}
{{- if has "CENTRIFUGO_ENGINE_REDIS_ADDRESS" $names }}true{{ end }}
{{- end }}
{{- end }}

{{- define "centrifugo-py.metricsEnabled" -}}
{{- if or .Values.metrics.enabled .Values.metrics.serviceMonitor.enabled }}true{{ end }}
{{- end }}

{{- define "centrifugo-py.internalEnabled" -}}
{{- if gt (int .Values.servers.internal.port) 0 }}true{{ end }}
{{- end }}

{{- define "centrifugo-py.grpcEnabled" -}}
{{- if dig "grpc_api" "enabled" false (.Values.config | default dict) }}true{{ end }}
{{- end }}

{{- define "centrifugo-py.uniGrpcEnabled" -}}
{{- if dig "uni_grpc" "enabled" false (.Values.config | default dict) }}true{{ end }}
{{- end }}

{{/* Name of the container/Service port serving API, health and metrics. */}}
{{- define "centrifugo-py.internalPortName" -}}
{{- if include "centrifugo-py.internalEnabled" . }}internal{{ else }}external{{ end }}
{{- end }}

{{/* Keys of earlier chart versions, failing with where they went rather than being ignored. */}}
{{- define "centrifugo-py.movedValues" -}}
{{- $moved := dict
      "engine" "config.engine (type, redis.address, redis.prefix)"
      "containerPort" "servers.external.port"
      "internalPort" "servers.internal.port"
      "extraEnv" "env (a map or a list of EnvVar)"
      "strategy" "deploymentStrategy" }}
{{- range $old, $new := $moved }}
{{- if hasKey $.Values $old }}
{{- fail (printf "value %q moved to %s" $old $new) }}
{{- end }}
{{- end }}
{{- if hasKey .Values.secrets "existingSecret" }}
{{- fail "value \"secrets.existingSecret\" moved to the top-level existingSecret (loaded with envFrom: name its keys CENTRIFUGO_*)" }}
{{- end }}
{{- if hasKey .Values.ingress "className" }}
{{- fail "value \"ingress.className\" moved to ingress.ingressClassName" }}
{{- end }}
{{- if hasKey .Values.metrics.serviceMonitor "labels" }}
{{- fail "value \"metrics.serviceMonitor.labels\" moved to metrics.serviceMonitor.additionalLabels" }}
{{- end }}
{{- if or (hasKey .Values.autoscaling "targetCPUUtilizationPercentage") (hasKey .Values.autoscaling "targetMemoryUtilizationPercentage") }}
{{- fail "autoscaling.target*UtilizationPercentage moved to autoscaling.cpu / autoscaling.memory ({enabled, target...})" }}
{{- end }}
{{- end }}

{{/* Settings that fail early instead of deploying a broken topology. */}}
{{- define "centrifugo-py.validate" -}}
{{- include "centrifugo-py.movedValues" . }}
{{- $engine := include "centrifugo-py.engine" . | fromJson }}
{{- if not (has (toString $engine.type) (list "memory" "redis")) }}
{{- fail (printf "config.engine.type must be memory or redis, got %q" (toString $engine.type)) }}
{{- end }}
{{- if not (include "centrifugo-py.shared" .) }}
{{- if or (gt (int .Values.replicaCount) 1) .Values.autoscaling.enabled (gt (int .Values.webConcurrency) 1) }}
{{- fail "more than one pod or worker needs the redis engine: set redis.enabled=true or config.engine.type=redis with config.engine.redis.address" }}
{{- end }}
{{- end }}
{{- if and (eq (toString $engine.type) "redis") (empty (dig "redis" "address" "" $engine)) (not (include "centrifugo-py.addressFromEnv" .)) }}
{{- fail "config.engine.type=redis needs config.engine.redis.address (external Redis), redis.enabled=true (bundled Redis) or CENTRIFUGO_ENGINE_REDIS_ADDRESS from existingSecret/env" }}
{{- end }}
{{- if and .Values.podDisruptionBudget.enabled (not (kindIs "invalid" .Values.podDisruptionBudget.minAvailable)) (ne (toString .Values.podDisruptionBudget.minAvailable) "") (not (kindIs "invalid" .Values.podDisruptionBudget.maxUnavailable)) (ne (toString .Values.podDisruptionBudget.maxUnavailable) "") }}
{{- fail "podDisruptionBudget: set minAvailable or maxUnavailable, not both" }}
{{- end }}
{{- if lt (int .Values.webConcurrency) 1 }}
{{- fail "webConcurrency must be at least 1" }}
{{- end }}
{{- if and .Values.ingressInternal.enabled (not (include "centrifugo-py.internalEnabled" .)) }}
{{- fail "ingressInternal needs servers.internal.port (the internal port is off)" }}
{{- end }}
{{- if and .Values.serviceInternal.useSeparate (not (include "centrifugo-py.internalEnabled" .)) }}
{{- fail "serviceInternal.useSeparate needs servers.internal.port (the internal port is off)" }}
{{- end }}
{{- end }}

{{/* config.json: the user's config with the chart-managed keys laid over it: ports, health,
     prometheus and the engine (the user's own, plus the bundled Redis when enabled). */}}
{{- define "centrifugo-py.config" -}}
{{- $server := dict "port" (int .Values.servers.external.port) }}
{{- if include "centrifugo-py.internalEnabled" . }}
{{- $_ := set $server "internal_port" (int .Values.servers.internal.port) }}
{{- end }}
{{- $managed := dict "http_server" $server "health" (dict "enabled" true) }}
{{- if include "centrifugo-py.metricsEnabled" . }}
{{- $_ := set $managed "prometheus" (dict "enabled" true) }}
{{- end }}
{{- if include "centrifugo-py.grpcEnabled" . }}
{{- $_ := set $managed "grpc_api" (dict "port" (int .Values.servers.grpc.port)) }}
{{- end }}
{{- if include "centrifugo-py.uniGrpcEnabled" . }}
{{- $_ := set $managed "uni_grpc" (dict "port" (int .Values.servers.uniGrpc.port)) }}
{{- end }}
{{- $_ := set $managed "engine" (include "centrifugo-py.engine" . | fromJson) }}
{{- mustMergeOverwrite (deepCopy (.Values.config | default dict)) $managed | toPrettyJson }}
{{- end }}

{{/* The chart Secret's data, plain text, by variable name: the `secrets` values given, else
     (without existingSecret) the live Secret's through `lookup`, else random. Computed once per
     render and kept in .Values so the Secret and the pods' checksum/secret see the same random
     values. Rendered as JSON. */}}
{{- define "centrifugo-py.secretData" -}}
{{- if not (hasKey .Values "__secretData") }}
{{- $data := dict }}
{{- $given := dict
      "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY" .Values.secrets.tokenHmacSecretKey
      "CENTRIFUGO_HTTP_API_KEY" .Values.secrets.apiKey
      "CENTRIFUGO_ADMIN_PASSWORD" .Values.secrets.adminPassword
      "CENTRIFUGO_ADMIN_SECRET" .Values.secrets.adminSecret }}
{{- /* Keys of chart 0.1.0's Secret, read so an upgrade keeps the generated values. */}}
{{- $old := dict
      "CENTRIFUGO_CLIENT_TOKEN_HMAC_SECRET_KEY" "token_hmac_secret_key"
      "CENTRIFUGO_HTTP_API_KEY" "http_api_key"
      "CENTRIFUGO_ADMIN_PASSWORD" "admin_password"
      "CENTRIFUGO_ADMIN_SECRET" "admin_secret" }}
{{- $live := dict }}
{{- if not .Values.existingSecret }}
{{- $live = (lookup "v1" "Secret" .Release.Namespace (include "centrifugo-py.fullname" .)).data | default dict }}
{{- end }}
{{- range $key, $value := $given }}
{{- if $value }}
{{- $_ := set $data $key (toString $value) }}
{{- else if not $.Values.existingSecret }}
{{- if hasKey $live $key }}
{{- $_ := set $data $key (get $live $key | b64dec) }}
{{- else if hasKey $live (get $old $key) }}
{{- $_ := set $data $key (get $live (get $old $key) | b64dec) }}
{{- else }}
{{- $_ := set $data $key (randAlphaNum 40) }}
{{- end }}
{{- end }}
{{- end }}
{{- with .Values.secrets.redisPassword }}
{{- $_ := set $data "CENTRIFUGO_ENGINE_REDIS_PASSWORD" (toString .) }}
{{- end }}
{{- $_ := set .Values "__secretData" $data }}
{{- end }}
{{- get .Values "__secretData" | toJson }}
{{- end }}

{{/* A probe: the user's with the chart's httpGet on health.handler_prefix at the internal port
     underneath, unless the user gives another handler. Call with (dict "root" $ "probe" <values>). */}}
{{- define "centrifugo-py.probe" -}}
{{- $probe := deepCopy (.probe | default dict) }}
{{- if not (or (hasKey $probe "tcpSocket") (hasKey $probe "exec") (hasKey $probe "grpc")) }}
{{- $root := .root }}
{{- $path := dig "health" "handler_prefix" "" ($root.Values.config | default dict) | default "/health" }}
{{- $httpGet := dict "path" $path "port" (include "centrifugo-py.internalPortName" $root) }}
{{- if include "centrifugo-py.internalEnabled" $root }}
{{- $_ := set $httpGet "scheme" $root.Values.servers.internal.scheme }}
{{- end }}
{{- $_ := set $probe "httpGet" (mustMergeOverwrite $httpGet (get $probe "httpGet" | default dict)) }}
{{- end }}
{{- toYaml $probe }}
{{- end }}

{{/* Ingress rules of `ingress` or `ingressInternal` to a Service port by name. Call with
     (dict "ingress" <values> "service" <name> "port" <port name>). */}}
{{- define "centrifugo-py.ingressSpec" -}}
{{- with .ingress.ingressClassName }}
ingressClassName: {{ . }}
{{- end }}
{{- with .ingress.tls }}
tls:
  {{- range . }}
  - hosts:
      {{- range .hosts }}
      - {{ . | quote }}
      {{- end }}
    {{- with .secretName }}
    secretName: {{ . }}
    {{- end }}
  {{- end }}
{{- end }}
rules:
  {{- $ctx := . }}
  {{- range .ingress.hosts }}
  - {{- with .host }}
    host: {{ . | quote }}
    {{- end }}
    http:
      paths:
        {{- range .paths }}
        {{- $path := kindIs "string" . | ternary (dict "path" .) . }}
        - path: {{ $path.path }}
          pathType: {{ $path.pathType | default $ctx.ingress.pathType | default "Prefix" }}
          backend:
            service:
              name: {{ $ctx.service }}
              port:
                name: {{ $ctx.port }}
        {{- end }}
  {{- end }}
{{- end }}

{{/* A Service of the server pods. Call with (dict "root" $ "name" <name> "service" <values
     with type, clusterIP, annotations, labels> "ports" (list (dict "name" <container port name>
     "values" <values with port, nodePort, appProtocol>))). */}}
{{- define "centrifugo-py.service" -}}
{{- $root := .root }}
{{- $type := .service.type | default "ClusterIP" }}
apiVersion: v1
kind: Service
metadata:
  name: {{ .name }}
  labels:
    {{- include "centrifugo-py.labels" $root | nindent 4 }}
    app.kubernetes.io/component: server
    {{- with .service.labels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .service.annotations }}
  annotations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
spec:
  type: {{ $type }}
  {{- if and (eq $type "ClusterIP") .service.clusterIP }}
  clusterIP: {{ .service.clusterIP }}
  {{- end }}
  ports:
    {{- range .ports }}
    - name: {{ .name }}
      port: {{ .values.port }}
      targetPort: {{ .name }}
      protocol: TCP
      {{- with .values.appProtocol }}
      appProtocol: {{ . }}
      {{- end }}
      {{- if and (has $type (list "NodePort" "LoadBalancer")) .values.nodePort }}
      nodePort: {{ .values.nodePort }}
      {{- end }}
    {{- end }}
  selector:
    {{- include "centrifugo-py.selectorLabels" $root | nindent 4 }}
{{- end }}
