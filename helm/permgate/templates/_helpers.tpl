{{/* Names, labels and the render-time checks of the permgate chart. */}}

{{- define "permgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "permgate.fullname" -}}
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

{{- define "permgate.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "permgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "permgate.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "permgate.labels" -}}
helm.sh/chart: {{ include "permgate.chart" . }}
{{ include "permgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: permgate
{{- end }}

{{- define "permgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "permgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "permgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The endpoint map: where it is mounted, and which ConfigMap holds it. */}}
{{- define "permgate.mapDir" -}}/etc/permgate/map{{- end }}
{{- define "permgate.configDir" -}}/etc/permgate/config{{- end }}
{{- define "permgate.dataDir" -}}/var/lib/permgate{{- end }}
{{- define "permgate.tlsDir" -}}/etc/permgate/tls{{- end }}

{{- define "permgate.mapConfigMapName" -}}
{{- default (printf "%s-endpoint-map" (include "permgate.fullname" .)) .Values.endpointMap.existingConfigMap }}
{{- end }}

{{/* The chart's own Secret: written only when there is something secret to hold. */}}
{{- define "permgate.secretData" -}}
{{- $data := dict }}
{{- if and (eq .Values.store.type "postgresql") .Values.store.postgresql.dsn }}
{{- $_ := set $data "PERMGATE_STORE" .Values.store.postgresql.dsn }}
{{- end }}
{{- if .Values.auth.jwt.enabled }}
{{- with .Values.auth.jwt.issuer }}{{ $_ := set $data "PERMGATE_AUTH__JWT__ISSUER" . }}{{ end }}
{{- with .Values.auth.jwt.audience }}{{ $_ := set $data "PERMGATE_AUTH__JWT__AUDIENCE" . }}{{ end }}
{{- with .Values.auth.jwt.jwksUrl }}{{ $_ := set $data "PERMGATE_AUTH__JWT__JWKS_URL" . }}{{ end }}
{{- end }}
{{- if $data }}{{ toYaml $data }}{{ end }}
{{- end }}

{{- define "permgate.secretName" -}}
{{- if .Values.existingSecret }}
{{- .Values.existingSecret }}
{{- else if include "permgate.secretData" . }}
{{- include "permgate.fullname" . }}
{{- end }}
{{- end }}

{{/* permgate.yaml (every key: README.md, Configuration). Secrets come in as PERMGATE_* environment variables. */}}
{{- define "permgate.config" -}}
{{- $p := .Values.permgate }}
{{- $config := dict
  "listen" (printf "0.0.0.0:%d" (int $p.port))
  "admin_listen" (printf "0.0.0.0:%d" (int $p.adminPort))
  "upstream" (printf "http://127.0.0.1:%d" (int .Values.app.port))
  "upstream_timeout_seconds" $p.upstreamTimeoutSeconds
  "endpoint_map" (printf "%s/%s" (include "permgate.mapDir" .) .Values.endpointMap.key)
  "default_enforcement" $p.defaultEnforcement
  "cache" (dict "decision_ttl_seconds" $p.cache.decisionTtlSeconds "max_entries" $p.cache.maxEntries)
  "audit" (dict "sink" $p.audit.sink)
}}
{{- $tls := .Values.tls }}
{{- $tlsDir := include "permgate.tlsDir" . }}
{{- if $tls.gateway.enabled }}
{{- $listen := dict
  "cert_file" (printf "%s/gateway/tls.crt" $tlsDir)
  "key_file" (printf "%s/gateway/tls.key" $tlsDir)
  "min_version" (toString $tls.gateway.minVersion)
}}
{{- if $tls.gateway.clientCa }}{{ $_ := set $listen "client_ca_file" (printf "%s/gateway/ca.crt" $tlsDir) }}{{ end }}
{{- $_ := set $config "listen_tls" $listen }}
{{- end }}
{{- if $tls.admin.enabled }}
{{- $_ := set $config "admin_tls" (dict
  "cert_file" (printf "%s/admin/tls.crt" $tlsDir)
  "key_file" (printf "%s/admin/tls.key" $tlsDir)
  "min_version" (toString $tls.admin.minVersion)
) }}
{{- end }}
{{- if $tls.upstream.enabled }}
{{- $_ := set $config "upstream" (printf "https://127.0.0.1:%d" (int .Values.app.port)) }}
{{- $upstream := dict "ca_file" (printf "%s/upstream/ca.crt" $tlsDir) }}
{{- if $tls.upstream.clientCertificate }}
{{- $_ := set $upstream "cert_file" (printf "%s/upstream/tls.crt" $tlsDir) }}
{{- $_ := set $upstream "key_file" (printf "%s/upstream/tls.key" $tlsDir) }}
{{- end }}
{{- with $tls.upstream.serverName }}{{ $_ := set $upstream "server_name" . }}{{ end }}
{{- $_ := set $config "upstream_tls" $upstream }}
{{- end }}
{{- if .Values.tracing.enabled }}
{{- $_ := set $config "tracing" (dict
  "otlp_endpoint" .Values.tracing.otlpEndpoint
  "sample_ratio" .Values.tracing.sampleRatio
  "service_name" .Values.tracing.serviceName
) }}
{{- end }}
{{- if eq .Values.store.type "sqlite" }}
{{- $_ := set $config "store" (printf "sqlite://%s/permgate.db" (include "permgate.dataDir" .)) }}
{{- end }}
{{- $auth := dict "token_prefix" .Values.auth.tokenPrefix }}
{{- if .Values.auth.jwt.enabled }}
{{- $jwt := dict
  "algorithms" .Values.auth.jwt.algorithms
  "principal_claim" .Values.auth.jwt.principalClaim
  "leeway_seconds" .Values.auth.jwt.leewaySeconds
}}
{{- with .Values.auth.jwt.keys }}{{ $_ := set $jwt "keys" . }}{{ end }}
{{- $_ := set $auth "jwt" $jwt }}
{{- end }}
{{- with .Values.tls.mtlsPrincipalFrom }}
{{- $_ := set $auth "mtls" (dict "principal_from" .) }}
{{- end }}
{{- $_ := set $config "auth" $auth }}
{{- if .Values.decisionService.enabled }}{{/* decision only: no gateway, no upstream */}}
{{- $config = omit $config "listen" "listen_tls" "upstream" "upstream_tls" "upstream_timeout_seconds" }}
{{- $_ := set $config "authz_listen" (printf "0.0.0.0:%d" (int .Values.decisionService.port)) }}
{{- $_ := set $config "authz_trusted_proxies" .Values.decisionService.trustedProxies }}
{{- if $tls.decision.enabled }}
{{- $authzTls := dict
  "cert_file" (printf "%s/decision/tls.crt" $tlsDir)
  "key_file" (printf "%s/decision/tls.key" $tlsDir)
  "min_version" (toString $tls.decision.minVersion)
}}
{{- if $tls.decision.clientCa }}{{ $_ := set $authzTls "client_ca_file" (printf "%s/decision/ca.crt" $tlsDir) }}{{ end }}
{{- $_ := set $config "authz_tls" $authzTls }}
{{- end }}
{{- end }}
{{- toYaml (mustMergeOverwrite $config (deepCopy $p.extraConfig)) }}
{{- end }}

{{/* Render-time checks: a bad combination of values fails the install with a clear message. */}}
{{- define "permgate.validate" -}}
{{- if eq .Values.store.type "sqlite" }}
{{- if gt (int .Values.replicaCount) 1 }}
{{- fail (printf "\n\nstore.type=sqlite supports exactly one replica, but replicaCount is %d.\nSQLite is a file on one pod's volume: replicas would each get their own store and disagree on every tenant, role and token.\nFor more than one replica set store.type=postgresql and store.postgresql.dsn (or existingSecret with PERMGATE_STORE)." (int .Values.replicaCount)) }}
{{- end }}
{{- if .Values.autoscaling.enabled }}
{{- fail "\n\nstore.type=sqlite cannot be combined with autoscaling.enabled=true: SQLite supports exactly one replica.\nSet store.type=postgresql and store.postgresql.dsn (or existingSecret with PERMGATE_STORE) to autoscale." }}
{{- end }}
{{- end }}
{{- if and (eq .Values.store.type "postgresql") (not .Values.store.postgresql.dsn) (not .Values.existingSecret) }}
{{- fail "\n\nstore.type=postgresql needs a DSN: set store.postgresql.dsn (postgresql://user:pass@host:5432/db) or existingSecret naming a Secret with the key PERMGATE_STORE." }}
{{- end }}
{{- if and .Values.auth.jwt.enabled (not .Values.existingSecret) }}
{{- if not (and .Values.auth.jwt.issuer .Values.auth.jwt.audience) }}
{{- fail "\n\nauth.jwt.enabled=true needs auth.jwt.issuer and auth.jwt.audience (or existingSecret with PERMGATE_AUTH__JWT__ISSUER and PERMGATE_AUTH__JWT__AUDIENCE)." }}
{{- end }}
{{- if not (or .Values.auth.jwt.jwksUrl .Values.auth.jwt.keys) }}
{{- fail "\n\nauth.jwt.enabled=true needs auth.jwt.jwksUrl or auth.jwt.keys (PEM public keys) to verify tokens with." }}
{{- end }}
{{- end }}
{{- if and .Values.endpointMap.content .Values.endpointMap.existingConfigMap }}
{{- fail "\n\nset endpointMap.content or endpointMap.existingConfigMap, not both." }}
{{- end }}
{{- range $name := list "gateway" "admin" "upstream" "decision" }}
{{- $listener := index $.Values.tls $name }}
{{- if and $listener.enabled (not $listener.secretName) }}
{{- fail (printf "\n\ntls.%s.enabled=true needs tls.%s.secretName: a kubernetes.io/tls Secret (tls.crt, tls.key%s), e.g. one that cert-manager keeps renewed." $name $name (ternary ", ca.crt" "" (eq $name "upstream"))) }}
{{- end }}
{{- end }}
{{- if and .Values.tls.mtlsPrincipalFrom (not (and .Values.tls.gateway.enabled .Values.tls.gateway.clientCa)) }}
{{- fail "\n\ntls.mtlsPrincipalFrom needs tls.gateway.enabled=true and tls.gateway.clientCa=true: only certificates verified against a client CA may name a principal." }}
{{- end }}
{{- if and .Values.tls.decision.enabled (not .Values.decisionService.enabled) }}
{{- fail "\n\ntls.decision.enabled=true needs decisionService.enabled=true: it is the decision service's listener (the sidecar has no decision port)." }}
{{- end }}
{{- if and .Values.tracing.enabled (not .Values.tracing.otlpEndpoint) }}
{{- fail "\n\ntracing.enabled=true needs tracing.otlpEndpoint: the collector's OTLP/HTTP base URL, e.g. http://otel-collector.observability:4318 (spans go to its /v1/traces)." }}
{{- end }}
{{- if has (int .Values.app.port) (list (int .Values.permgate.port) (int .Values.permgate.adminPort)) }}
{{- fail (printf "\n\napp.port %d is also one of permgate's ports (permgate.port %d, permgate.adminPort %d): the API and the sidecar share the pod's network, so they need different ports." (int .Values.app.port) (int .Values.permgate.port) (int .Values.permgate.adminPort)) }}
{{- end }}
{{- end }}
